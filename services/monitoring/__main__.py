"""`python -m services.monitoring`: run the monitoring service alone."""

from services.cli import main

main(["serve", "monitoring"])

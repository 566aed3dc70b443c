"""`python -m services.realtime`: run the realtime service alone."""

from services.cli import main

main(["serve", "realtime"])

"""`python -m services.ml`: run the ML service alone."""

from services.cli import main

main(["serve", "ml"])

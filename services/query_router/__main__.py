"""`python -m services.query_router`: run the query-router alone."""

from services.cli import main

main(["serve", "query-router"])

"""A benchmark's --docs rewrites its own section of docs/benchmarks.md and nothing else."""

from __future__ import annotations

from benchmarks.report import HAND_NOTES, write_docs_report, write_docs_section

DOC = f"""# Benchmarks

Run on day 1.

## Queries

old queries table

## Churn

old churn table

{HAND_NOTES}

A note by hand about churn.

## REST ingest

old REST table
"""


def test_a_section_is_replaced_where_it_stands_and_keeps_its_notes_by_hand(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(DOC)
    write_docs_section(docs, "## Churn", "## Churn\n\nnew churn table\n")
    text = docs.read_text()
    assert "old churn table" not in text and "new churn table" in text
    assert text.index("## Queries") < text.index("new churn table") < text.index(HAND_NOTES)
    assert text.index("A note by hand about churn.") < text.index("## REST ingest")
    assert "old REST table" in text and "old queries table" in text
    write_docs_section(docs, "## REST ingest", "## REST ingest\n\nnew REST table")
    assert "old REST table" not in docs.read_text() and docs.read_text().endswith("new REST table\n")
    write_docs_section(docs, "## Resent data", "## Resent data\n\nresend table")
    assert docs.read_text().endswith("## Resent data\n\nresend table\n")


def test_the_run_report_replaces_the_head_and_its_sections_and_keeps_every_other(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(DOC)
    write_docs_report(
        docs, "# Benchmarks\n\nRun on day 2.\n\n## Queries\n\nnew queries table\n\n## Method\n\nhow\n"
    )
    text = docs.read_text()
    assert "day 1" not in text and "old queries table" not in text
    order = [
        "Run on day 2.",
        "new queries table",
        "## Method",
        "old churn table",
        HAND_NOTES,
        "old REST table",
    ]
    assert [text.index(s) for s in order] == sorted(text.index(s) for s in order)

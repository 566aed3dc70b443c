"""Embedded storage: write-ahead log, hot tier, columnar segments."""

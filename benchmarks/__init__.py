"""Benchmarks: our service side by side with VictoriaMetrics and raw DuckDB on TSBS cpu-only data.

`make bench` runs `benchmarks/setup.sh` and then `python -m benchmarks.run`; see benchmarks/run.py.
"""

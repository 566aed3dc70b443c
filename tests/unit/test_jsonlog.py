import json
import logging

from libs.jsonlog import JsonFormatter


def test_one_json_object_per_line_with_extras():
    record = logging.LogRecord("svc", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    record.port = 8080
    line = JsonFormatter("analytics").format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "hello world"
    assert entry["level"] == "WARNING"
    assert entry["service"] == "analytics"
    assert entry["port"] == 8080
    assert entry["ts"].endswith("Z")

from pathlib import Path

import pytest

from gateway.envoy_config import render
from libs.config import load_settings
from libs.errors import ConfigError


@pytest.fixture
def descriptor(tmp_path: Path) -> Path:
    path = tmp_path / "descriptor.binpb"
    path.write_bytes(b"")
    return path


def test_render_routes_every_service_to_its_address(monkeypatch, descriptor):
    monkeypatch.setenv("GATEWAY_PORT", "18080")
    monkeypatch.setenv("REALTIME_ADDRESS", "127.0.0.1:6001,127.0.0.1:6002")
    monkeypatch.setenv("MAX_REQUEST_BYTES", "1048576")
    text = render(load_settings(), descriptor)
    assert "port_value: 18080" in text
    assert "{ address: 127.0.0.1, port_value: 6001 }" in text
    assert "{ address: 127.0.0.1, port_value: 6002 }" in text
    assert "max_request_bytes: 1048576" in text
    # Training has its own, longer timeout, matched before the ml service's unary routes.
    train = text.index("path: /platformq.analytics.v1.MLService/TrainMaintenance")
    assert train < text.index("prefix: /platformq.analytics.v1.MLService/")
    assert "timeout: 1800s" in text[train : train + 200]
    assert str(descriptor.resolve()) in text
    assert "$" not in text.replace("${", "")  # every placeholder filled


def test_bad_address_and_missing_descriptor(monkeypatch, tmp_path, descriptor):
    with pytest.raises(ConfigError, match="make gen"):
        render(load_settings(), tmp_path / "missing.binpb")
    monkeypatch.setenv("ML_ADDRESS", "no-port")
    with pytest.raises(ConfigError, match="no-port"):
        render(load_settings(), descriptor)

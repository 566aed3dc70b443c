import pytest

from libs.config import load_settings
from libs.errors import ConfigError


def test_seed_variable_names_are_read(monkeypatch):
    env = {
        "SERVICE_NAME": "analytics-test",
        "LOG_LEVEL": "debug",
        "PULSAR_URL": "pulsar://127.0.0.1:6650",
        "DRUID_BROKER_URL": "http://127.0.0.1:8082",
        "DRUID_COORDINATOR_URL": "http://127.0.0.1:8081",
        "DRUID_OVERLORD_URL": "http://127.0.0.1:8090",
        "IGNITE_HOST": "127.0.0.1",
        "IGNITE_PORT": "10801",
        "ELASTICSEARCH_HOST": "127.0.0.1",
        "TRINO_HOST": "127.0.0.1",
        "TRINO_PORT": "8085",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "GATEWAY_PORT": "18080",
        "DATA_DIR": "/tmp/x",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    assert (s.service_name, s.log_level, s.pulsar_url) == (
        "analytics-test",
        "DEBUG",
        "pulsar://127.0.0.1:6650",
    )
    assert (s.ignite_port, s.trino_port, s.gateway_port) == (10801, 8085, 18080)
    assert s.druid_overlord_url == "http://127.0.0.1:8090"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert str(s.data_dir) == "/tmp/x"


def test_ports_and_addresses(monkeypatch):
    s = load_settings()
    assert s.grpc_bind_port == 50051
    assert s.port_for("realtime") == 50052
    assert s.address_of("ml") == "127.0.0.1:50051"
    monkeypatch.setenv("REALTIME_ADDRESS", "127.0.0.1:6001,127.0.0.1:6002")
    assert load_settings().address_of("realtime") == "127.0.0.1:6001,127.0.0.1:6002"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("IGNITE_PORT", "not-a-port"),
        ("LOG_LEVEL", "LOUD"),
        ("GATEWAY_PORT", "70000"),
        ("MAX_REQUEST_BYTES", "0"),
    ],
)
def test_bad_values_stop_start_up_naming_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert var in str(err.value)

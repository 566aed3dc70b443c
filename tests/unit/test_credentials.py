"""Credentials come from settings and are never printed: Pulsar's token reaches the client's
authentication only; MLflow's password stays a secret in the settings."""

from __future__ import annotations

import pulsar

from libs.bus.pulsar import PulsarBus
from libs.config import load_settings

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.dG9rZW4"


def test_secrets_are_not_in_the_settings_text(tmp_path):
    settings = load_settings(
        data_dir=tmp_path,
        pulsar_auth_token=TOKEN,
        mlflow_tracking_username="ml",
        mlflow_tracking_password="hunter2",
    )
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert TOKEN not in text and "hunter2" not in text
    assert settings.pulsar_auth_token.get_secret_value() == TOKEN


def test_the_pulsar_client_presents_the_token(monkeypatch):
    # Stand-in for pulsar.Client (no broker with token authentication runs here): it records how the
    # bus builds its client, and that is all this test asks.
    made: dict = {}

    class RecordingClient:
        def __init__(self, url, **options):
            made.update(url=url, **options)

    monkeypatch.setattr(pulsar, "Client", RecordingClient)
    PulsarBus("pulsar://127.0.0.1:6650", auth_token=TOKEN)
    assert isinstance(made["authentication"], pulsar.AuthenticationToken)
    PulsarBus("pulsar://127.0.0.1:6650")
    assert made["authentication"] is None

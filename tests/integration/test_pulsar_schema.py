"""Topics carry the events.proto message as their schema in Pulsar's registry."""

import json
import urllib.request
import uuid

import pytest

from libs.bus.pulsar import PulsarBus
from platformq.analytics.v1 import events_pb2

pytestmark = pytest.mark.integration


async def test_publish_registers_the_protobuf_schema(pulsar_broker):
    topic = f"alerts.schema-{uuid.uuid4().hex[:8]}"
    bus = PulsarBus(pulsar_broker.service_url)
    try:
        await bus.publish(topic, events_pb2.AlertEvent(name="SlowBatchQuery", state="firing"), key="k")
    finally:
        await bus.close()
    url = f"{pulsar_broker.http_url}/admin/v2/schemas/public/default/{topic}/schema"
    with urllib.request.urlopen(url, timeout=30) as reply:
        schema = json.loads(reply.read())
    assert schema["type"] == "PROTOBUF_NATIVE"
    assert "platformq.analytics.v1.AlertEvent" in schema["data"]

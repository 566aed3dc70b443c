"""The event bus: an interface with Pulsar's semantics, and its two implementations."""

from libs.bus.base import Bus, Envelope, Handler, Serialized
from libs.bus.inprocess import InProcessBus

__all__ = ["Bus", "Envelope", "Handler", "InProcessBus", "Serialized", "make_bus"]


def make_bus(
    pulsar_url: str, tenant: str = "public", namespace: str = "default", auth_token: str = ""
) -> Bus:
    """Apache Pulsar when a broker URL is configured (distributed mode), else the in-process bus;
    `auth_token` (PULSAR_AUTH_TOKEN) is presented to the broker when given."""
    if not pulsar_url:
        return InProcessBus()
    from libs.bus.pulsar import PulsarBus  # the client library loads only where it is used

    return PulsarBus(pulsar_url, tenant, namespace, auth_token=auth_token)

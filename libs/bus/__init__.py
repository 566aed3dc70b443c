"""The event bus: an interface with Pulsar's semantics, and its in-process implementation."""

from libs.bus.base import Bus, Envelope, Handler
from libs.bus.inprocess import InProcessBus

__all__ = ["Bus", "Envelope", "Handler", "InProcessBus"]

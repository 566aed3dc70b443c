"""Stream bindings: online models that learn from `simulation.metrics.*` as points arrive, on
their own bus subscription. A binding (ONLINE_BINDINGS, a JSON list) names a model, its kind and
task, the feature metrics and the target metric of one entity (the value of `entity_label`, e.g.
a host); a sample is the entity's features and target at one timestamp. Points of a timestamp that
arrive in different batches are joined in a bounded buffer."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass

from libs.bus import Bus, Envelope
from libs.errors import ConfigError, InvalidArgument
from libs.selfmetrics import SelfMetrics
from libs.storage import DEFAULT_TENANT
from libs.writes import METRICS_TOPICS
from platformq.analytics.v1 import events_pb2
from services.ml.online.learning import OnlineLearning
from services.ml.online.spec import check_model_name, resolve_kind_task

SUBSCRIPTION = "ml-online"
PENDING_ROWS = 10_000  # per binding: partial rows waiting for their other metrics
_KEYS = {"model", "kind", "task", "features", "target", "entity_label", "datasource"}


@dataclass(frozen=True)
class BindingSpec:
    """One configured stream binding."""

    model: str
    kind: str
    task: str
    features: tuple[str, ...]
    target: str
    entity_label: str = "host"
    datasource: str = "platform_metrics"


def parse_bindings(text: str) -> tuple[BindingSpec, ...]:
    """ONLINE_BINDINGS parsed; a bad entry raises ConfigError naming it."""
    if not text.strip():
        return ()
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"ONLINE_BINDINGS: not JSON ({exc})") from None
    if not isinstance(items, list):
        raise ConfigError("ONLINE_BINDINGS: give a JSON list of bindings")
    out = []
    for i, item in enumerate(items):
        where = f"ONLINE_BINDINGS[{i}]"
        if (
            not isinstance(item, dict)
            or not set(item) <= _KEYS
            or not {"model", "features", "target"} <= set(item)
        ):
            raise ConfigError(
                f"{where}: an object with model, features and target (and kind, task, "
                "entity_label, datasource)"
            )
        features = item["features"]
        if (
            not isinstance(features, list)
            or not features
            or not all(isinstance(f, str) and f for f in features)
        ):
            raise ConfigError(f"{where}.features: a non-empty list of metric names")
        try:
            check_model_name(str(item["model"]))
            kind, task = resolve_kind_task(str(item.get("kind", "")), str(item.get("task", "")), None)
        except InvalidArgument as exc:
            raise ConfigError(f"{where}.{exc.field}: {exc.reason}") from None
        target = str(item["target"])
        if not target or target in features:
            raise ConfigError(f"{where}.target: a metric name that is not a feature")
        out.append(
            BindingSpec(
                str(item["model"]),
                kind,
                task,
                tuple(features),
                target,
                str(item.get("entity_label", "host")),
                str(item.get("datasource", "platform_metrics")),
            )
        )
    return tuple(out)


class StreamTrainer:
    """Feeds the bound models from the bus; see the module docstring."""

    def __init__(
        self,
        bus: Bus,
        learning: OnlineLearning,
        bindings: tuple[BindingSpec, ...],
        max_redeliveries: int = 3,
        max_backlog_bytes: int = 256 * 1024 * 1024,
        metrics: SelfMetrics | None = None,
    ) -> None:
        self.bus = bus
        self.learning = learning
        self.bindings = bindings
        self.max_redeliveries = max_redeliveries
        self.max_backlog_bytes = max_backlog_bytes
        self.metrics = metrics
        # Per binding: (entity, timestamp) -> the metrics seen so far, oldest first.
        self._pending: list[OrderedDict[tuple[str, int], dict[str, float]]] = [
            OrderedDict() for _ in bindings
        ]
        self.stats = {"learned": 0, "dropped": 0}

    async def start(self) -> None:
        """Subscribe to the metrics stream."""
        await self.bus.subscribe(
            METRICS_TOPICS,
            SUBSCRIPTION,
            self.handle,
            max_redeliveries=self.max_redeliveries,
            max_backlog_bytes=self.max_backlog_bytes,
        )

    async def handle(self, envelope: Envelope) -> None:
        """Bus handler: join each binding's metrics per entity and timestamp, learn complete rows."""
        event = events_pb2.MetricsBatchEvent.FromString(envelope.payload)
        for binding, pending in zip(self.bindings, self._pending, strict=True):
            # Bindings are the operator's: their models learn tenant `default`'s metrics only.
            if event.datasource != binding.datasource or (event.tenant or DEFAULT_TENANT) != DEFAULT_TENANT:
                continue
            rows = self._rows(binding, pending, event)
            if rows:
                self.stats["learned"] += await self.learning.learn_rows(
                    binding.model, binding.kind, binding.task, rows
                )
        if self.metrics is not None:
            lag = time.time() - envelope.publish_time_ms / 1000
            self.metrics.stream_lag.labels(SUBSCRIPTION).set(max(0.0, lag))

    def _rows(
        self, binding: BindingSpec, pending, event
    ) -> list[tuple[str, int, dict[str, float], float | str]]:
        wanted = set(binding.features) | {binding.target}
        for s in event.series:
            entity = s.labels.get(binding.entity_label)
            if s.name not in wanted or not entity:
                continue
            for ts, value in zip(s.timestamps_ms, s.values, strict=False):
                pending.setdefault((entity, int(ts)), {})[s.name] = value
        rows = []
        for key in [k for k, got in pending.items() if len(got) == len(wanted)]:
            got = pending.pop(key)
            target = got.pop(binding.target)
            if binding.task == "classification":
                if not float(target).is_integer():
                    self.stats["dropped"] += 1  # a class must be an integer metric value
                    continue
                target = str(int(target))
            rows.append((key[0], key[1], got, target))
        while len(pending) > PENDING_ROWS:
            pending.popitem(last=False)
            self.stats["dropped"] += 1
        return rows

"""Alerts: the seed's rules evaluated every ALERT_EVAL_SECONDS over the stored self-metrics, with
Prometheus' states (pending, firing, resolved), every transition stored and published.

The engine reads datasource `analytics_self` through the query-router's gRPC API (raw samples), so
it runs the same in mode all and in distributed mode. A rule whose read fails keeps its alerts as
they are, as Prometheus does when a rule's query fails: nothing resolves because it could not be
seen. A query-router the engine cannot reach (from another process) is logged and counted in
`analytics_engine_connection_failures_total{engine="query-router"}`, and raises
EngineConnectionFailure from the engine's own observations even though the store cannot be read.
Transitions are stored first (`alert_store`), then published as `AlertEvent`s on `alerts.<name>`,
keyed by name and labels, and counted in `analytics_alerts_active{alertname,state}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from libs.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from libs.selfmetrics import SELF_DATASOURCE
from libs.selfmetrics_writer import process_labels
from libs.storage import DEFAULT_TENANT
from libs.timeparse import format_time_ms, parse_duration_ms, parse_time_ms
from platformq.analytics.v1 import common_pb2, events_pb2, query_service_pb2
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.context import ServiceContext
from services.monitoring.alert_rules import Finding, Labels, Rule, RuleSet, SelfSeries, labels_of, seed_rules
from services.monitoring.alert_store import (
    FIRING,
    INACTIVE,
    PENDING,
    RESOLVED,
    AlertRecord,
    AlertStore,
    Transition,
    store_path,
)
from services.monitoring.reader import PeerReader

log = logging.getLogger(__name__)

DEFAULT_HISTORY_MS = 86_400_000
DEFAULT_LIMIT = 100
LIST_STATES = {
    PENDING: (PENDING,),
    FIRING: (FIRING,),
    RESOLVED: (RESOLVED,),
    INACTIVE: (INACTIVE,),
    "active": (PENDING, FIRING),
}
"""The `state` filter of ListAlerts and the states each value keeps."""
QUERY_ROUTER = "query-router"


class AlertStates:
    """The state machine of every alert (a rule and a label set), Prometheus' way.

    A condition that becomes true makes the alert pending (firing at once when the rule's `for` is
    0); pending for `for` makes it fire; a pending alert whose condition stops holding becomes
    inactive (it never fired, so nothing is resolved); a firing one becomes resolved and stays
    listed as resolved until its condition holds again, when it starts over as pending.
    """

    def __init__(self, records: Iterable[AlertRecord] = ()) -> None:
        self._alerts: dict[tuple[str, Labels], AlertRecord] = {(r.rule_id, r.labels): r for r in records}

    def apply(
        self, rule: Rule, findings: Sequence[Finding], now_ms: int, complete: bool = True
    ) -> list[Transition]:
        """Move the rule's alerts to what its findings say at `now_ms`; returns the transitions.
        Not `complete` (part of the rule's input could not be read): alerts without a finding keep
        their state instead of resolving."""
        out: list[Transition] = []
        seen = set()
        for f in findings:
            key = (rule.id, f.labels)
            seen.add(key)
            old = self._alerts.get(key)
            if old is None or old.state in (RESOLVED, INACTIVE):
                state = FIRING if rule.for_ms <= 0 else PENDING
                new = AlertRecord(
                    rule.id,
                    rule.name,
                    f.labels,
                    state,
                    rule.severity,
                    f.summary,
                    f.value,
                    f.threshold,
                    now_ms,
                    now_ms,
                )
                out.append(Transition(new, old.state if old else INACTIVE))
            elif old.state == PENDING and now_ms - old.active_since_ms >= rule.for_ms:
                new = replace(
                    old,
                    state=FIRING,
                    summary=f.summary,
                    value=f.value,
                    threshold=f.threshold,
                    timestamp_ms=now_ms,
                )
                out.append(Transition(new, PENDING))
            else:
                new = replace(old, summary=f.summary, value=f.value, threshold=f.threshold)
            self._alerts[key] = new
        if complete:
            for key, old in list(self._alerts.items()):
                if key[0] != rule.id or key in seen or old.state not in (PENDING, FIRING):
                    continue
                new = replace(old, state=RESOLVED if old.state == FIRING else INACTIVE, timestamp_ms=now_ms)
                out.append(Transition(new, old.state))
                if new.state == INACTIVE:
                    del self._alerts[key]
                else:
                    self._alerts[key] = new
        return out

    def current(self) -> list[AlertRecord]:
        """Every alert pending, firing or resolved: firing first, then pending, then resolved, the
        most recent change first."""
        order = {FIRING: 0, PENDING: 1, RESOLVED: 2}
        return sorted(
            self._alerts.values(), key=lambda a: (order[a.state], -a.timestamp_ms, a.rule_id, a.labels)
        )

    def counts(self) -> dict[tuple[str, str], int]:
        """Alerts pending or firing by (name, state)."""
        out: dict[tuple[str, str], int] = {}
        for a in self._alerts.values():
            if a.state in (PENDING, FIRING):
                out[(a.name, a.state)] = out.get((a.name, a.state), 0) + 1
        return out


def alert_message(a: AlertRecord) -> pb.Alert:
    """An alert as the API shows it."""
    return pb.Alert(
        name=a.name,
        state=a.state,
        severity=a.severity,
        summary=a.summary,
        labels=dict(a.labels),
        value=a.value,
        threshold=a.threshold,
        active_since_ms=a.active_since_ms,
        timestamp_ms=a.timestamp_ms,
    )


def alert_event(t: Transition) -> events_pb2.AlertEvent:
    """A transition as the event published on `alerts.<name>`."""
    a = t.alert
    return events_pb2.AlertEvent(
        tenant=DEFAULT_TENANT,
        name=a.name,
        state=a.state,
        severity=a.severity,
        summary=a.summary,
        labels=dict(a.labels),
        timestamp_ms=a.timestamp_ms,
        value=a.value,
        threshold=a.threshold,
        from_state=t.from_state,
        active_since_ms=a.active_since_ms,
    )


def event_key(name: str, labels: Labels) -> str:
    """The ordering key of an alert's events: its name and labels."""
    return f"{name}{json.dumps(dict(labels), sort_keys=True, separators=(',', ':'))}"


class AlertEngine:
    """Evaluates the rules continuously, keeps the states and their history, answers ListAlerts."""

    def __init__(
        self,
        context: ServiceContext,
        rules: RuleSet | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.context = context
        settings = context.settings
        self.rules = rules or seed_rules(settings)
        self.interval = settings.alert_eval_seconds
        self.window_ms = int(settings.alert_window_seconds * 1000)
        self.clock = clock
        self.store = AlertStore(store_path(settings.data_dir))
        self.reader = PeerReader(context.address_of, 4 * settings.max_request_bytes)
        self.states = AlertStates()
        self._failures: deque[int] = deque()  # when this engine failed to reach the query-router
        self._unreachable = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def start(self) -> None:
        """Open the store, reload the current states and start evaluating."""
        await asyncio.to_thread(self.store.open)
        self.states = AlertStates(await asyncio.to_thread(self.store.current))
        self._update_gauge()
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name="alert-evaluation")

    async def stop(self) -> None:
        """Stop evaluating (an evaluation in progress is cancelled) and close the store."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.reader.close()
        await asyncio.to_thread(self.store.close)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time()
        while not self._stopping.is_set():
            try:
                await self.evaluate()
            except Exception:
                # A store, bus or decoding failure loses this round only (logged with its trace);
                # the next round starts afresh, so evaluation never stops for good.
                log.exception("alert evaluation failed")
            next_round += self.interval
            if next_round < loop.time():  # a round that overran: skip the missed ticks
                next_round = loop.time() + self.interval
            with contextlib.suppress(TimeoutError):  # the next round is due
                await asyncio.wait_for(self._stopping.wait(), next_round - loop.time())

    # ---- evaluation ---------------------------------------------------------------------------
    async def evaluate(self) -> list[Transition]:
        """One round: read each rule's samples, apply the findings, store and publish the
        transitions. Returns them."""
        now = self._now_ms()
        reads = await asyncio.gather(*(self._read(rule, now) for rule in self.rules.rules))
        unreachable = [error for _, error in reads if error is not None]
        if unreachable and not self._unreachable:
            log.warning("alert rules cannot read the self-metrics: %s", unreachable[0])  # once per outage
        elif self._unreachable and not unreachable:
            log.info("alert rules read the self-metrics again")
        self._unreachable = bool(unreachable)
        # In one process the query-router is this server: failing to reach it means it is
        # stopping, not a connection failure.
        if unreachable and QUERY_ROUTER not in self.context.hosted:
            self._failures.append(now)
            self.context.metrics.engine_connection_failures.labels(engine=QUERY_ROUTER).inc()
        while self._failures and self._failures[0] <= now - self.window_ms:
            self._failures.popleft()
        transitions: list[Transition] = []
        for rule, (series, _) in zip(self.rules.rules, reads, strict=True):
            findings = [] if series is None else await self._evaluate(rule, series, now)
            if rule.name == "EngineConnectionFailure":
                findings = self._with_own_failures(rule, findings)
            if series is None and not findings:
                continue  # nothing known: the rule's alerts stay as they are
            transitions += self.states.apply(rule, findings, now, complete=series is not None)
        if transitions:
            transitions = await asyncio.to_thread(self.store.record, transitions)
            for t in transitions:
                log.info(
                    "alert %s",
                    t.alert.state,
                    extra={"alert": t.alert.name, "labels": dict(t.alert.labels), "from_state": t.from_state},
                )
                await self.context.bus.publish(
                    f"alerts.{t.alert.name}", alert_event(t), key=event_key(t.alert.name, t.alert.labels)
                )
        self._update_gauge()
        return transitions

    async def _read(self, rule: Rule, now_ms: int) -> tuple[list[SelfSeries] | None, str | None]:
        """The rule's stored samples ([] when there are none yet), or None when they cannot be read,
        with the reason when the query-router could not be reached."""
        request = query_service_pb2.QueryRequest(
            datasource=SELF_DATASOURCE,
            metrics=[rule.metric],
            filters=[common_pb2.LabelFilter(label=k, op="=", value=v) for k, v in rule.filters],
            aggregation="raw",
            # realtime: the hot tier first, and no cache (a cached answer would hide new samples and
            # the engine's own reads would count as cache lookups).
            mode="realtime",
            start=format_time_ms(now_ms - rule.lookback_ms),
            end=format_time_ms(now_ms + 1),
        )
        try:
            response = await self.reader.query(request, timeout=self.interval)
        except NotFound:
            return [], None  # no process has written self-metrics yet
        except (Unavailable, DeadlineExceeded) as exc:
            return None, exc.reason
        except InvalidArgument as exc:
            log.error("alert rule %s: the self-metrics read was refused: %s", rule.id, exc.reason)
            return None, None
        series = [
            SelfSeries(s.metric, dict(s.group), [(p.timestamp_ms, p.value) for p in s.points])
            for s in response.series
        ]
        return series, None

    async def _evaluate(self, rule: Rule, series: list[SelfSeries], now_ms: int) -> list[Finding]:
        history_start = None
        if rule.needs_history_start(series, now_ms):
            history_start = await self._history_start()
        return rule.evaluate(series, now_ms, history_start)

    async def _history_start(self) -> int | None:
        """The time of the oldest stored self-metric sample, None when unknown."""
        try:
            meta = await self.reader.metadata(SELF_DATASOURCE, timeout=self.interval)
        except (NotFound, Unavailable, DeadlineExceeded) as exc:
            log.warning("alert rules: cannot read the self-metrics' time span: %s", exc.reason)
            return None
        return parse_time_ms(meta.start, "start") if meta.start else None

    def _with_own_failures(self, rule: Rule, findings: list[Finding]) -> list[Finding]:
        """The rule's findings merged with this engine's own failures to reach the query-router,
        which it knows even when the store cannot be read."""
        if not self._failures:
            return findings
        # The labels this process's own counter is stored under, so the two merge into one alert.
        own = process_labels(self.context.hosted, self.context.local_port)
        labels = labels_of({**own, "engine": QUERY_ROUTER})
        count = float(len(self._failures))
        merged = {f.labels: f for f in findings}
        stored = merged.get(labels)
        if stored is None or stored.value < count:
            summary = (
                f"the monitoring service failed {count:.0f} times to read from the query-router "
                f"in the last {self.window_ms // 1000} s"
            )
            merged[labels] = Finding(labels, count, rule.threshold, summary)
        return sorted(merged.values(), key=lambda f: f.labels)

    def _update_gauge(self) -> None:
        counts = self.states.counts()
        gauge = self.context.metrics.alerts_active
        for name in dict.fromkeys(r.name for r in self.rules.rules):
            for state in (PENDING, FIRING):
                gauge.labels(alertname=name, state=state).set(counts.get((name, state), 0))

    # ---- API ----------------------------------------------------------------------------------
    def active(self) -> list[pb.Alert]:
        """The alerts pending or firing now."""
        return [alert_message(a) for a in self.states.current() if a.state in (PENDING, FIRING)]

    async def list(
        self, request: pb.ListAlertsRequest, tenant: str = DEFAULT_TENANT
    ) -> pb.ListAlertsResponse:
        """Current alerts, the history (newest first) and the rules, filtered; the request has
        been validated by `spec.check_list_alerts`. The alerts watch the service itself, in tenant
        `default` (the operator's): another tenant sees the rules and no alert."""
        if tenant != DEFAULT_TENANT:
            return self._rules(request, pb.ListAlertsResponse())
        now = self._now_ms()
        since = now - (
            parse_duration_ms(request.time_range, "time_range") if request.time_range else DEFAULT_HISTORY_MS
        )
        states = LIST_STATES.get(request.state, ())
        response = pb.ListAlertsResponse()
        for a in self.states.current():
            if (
                (states and a.state not in states)
                or (request.name and a.name != request.name)
                or (request.severity and a.severity != request.severity)
                or (a.state == RESOLVED and a.timestamp_ms < since)
            ):
                continue
            response.alerts.append(alert_message(a))
        history = await asyncio.to_thread(
            self.store.history,
            since,
            name=request.name,
            severity=request.severity,
            states=states,
            limit=request.limit or DEFAULT_LIMIT,
        )
        for t in history:
            response.history.add(id=t.id, alert=alert_message(t.alert), from_state=t.from_state)
        return self._rules(request, response)

    def _rules(self, request: pb.ListAlertsRequest, response: pb.ListAlertsResponse) -> pb.ListAlertsResponse:
        for rule in self.rules.rules:
            if (request.name and rule.name != request.name) or (
                request.severity and rule.severity != request.severity
            ):
                continue
            response.rules.add(
                name=rule.name,
                severity=rule.severity,
                expression=f"{rule.expression}; PromQL: {rule.promql}",
                threshold=rule.threshold,
                for_seconds=rule.for_ms / 1000,
            )
        return response

"""The alert state machine with a controllable clock: pending, firing after `for`, resolved,
re-firing, flapping, and rules whose input could not be read."""

from __future__ import annotations

from services.monitoring.alert_rules import Finding, IncreaseRule
from services.monitoring.alerts import AlertStates

S = 1000
T0 = 1_800_000_000_000
LABELS = (("engine", "duckdb"), ("instance", "all"))


def rule(
    for_seconds: float = 60, rule_id: str = "EngineConnectionFailure", name: str = "EngineConnectionFailure"
):
    return IncreaseRule(
        id=rule_id,
        name=name,
        severity="critical",
        what="failures",
        expression="any failure",
        promql="increase(x[5m]) > 0",
        threshold=0.0,
        for_ms=int(for_seconds * S),
        window_ms=300 * S,
        metric="analytics_engine_connection_failures_total",
    )


def finding(value: float = 1.0, labels=LABELS) -> Finding:
    return Finding(labels, value, 0.0, f"{value:.0f} failures")


def steps(states, r, timeline):
    """Apply (seconds after T0, holds) steps; returns [(seconds, from, to)] for every transition."""
    out = []
    for seconds, holds in timeline:
        for t in states.apply(r, [finding()] if holds else [], T0 + seconds * S):
            out.append((seconds, t.from_state, t.alert.state))
    return out


def test_pending_until_for_has_passed_then_firing_then_resolved():
    states, r = AlertStates(), rule(for_seconds=60)
    transitions = steps(states, r, [(0, True), (15, True), (45, True), (60, True), (75, True), (90, False)])
    assert transitions == [(0, "inactive", "pending"), (60, "pending", "firing"), (90, "firing", "resolved")]
    (alert,) = states.current()
    assert (alert.state, alert.active_since_ms, alert.timestamp_ms) == ("resolved", T0, T0 + 90 * S)


def test_a_zero_for_fires_at_once():
    states = AlertStates()
    assert steps(states, rule(for_seconds=0), [(0, True)]) == [(0, "inactive", "firing")]


def test_a_resolved_alert_fires_again_after_pending_with_a_new_active_since():
    states, r = AlertStates(), rule(for_seconds=30)
    transitions = steps(states, r, [(0, True), (30, True), (45, False), (60, True), (75, True), (90, True)])
    assert transitions == [
        (0, "inactive", "pending"),
        (30, "pending", "firing"),
        (45, "firing", "resolved"),
        (60, "resolved", "pending"),
        (90, "pending", "firing"),
    ]
    (alert,) = states.current()
    assert alert.state == "firing" and alert.active_since_ms == T0 + 60 * S


def test_a_flapping_condition_never_fires_and_each_dip_restarts_the_for_clock():
    states, r = AlertStates(), rule(for_seconds=60)
    timeline = [
        (0, True),
        (30, True),
        (45, False),
        (60, True),
        (90, True),
        (105, False),
        (120, True),
        (150, True),
    ]
    transitions = steps(states, r, timeline)
    assert [to for _, _, to in transitions] == ["pending", "inactive", "pending", "inactive", "pending"]
    (alert,) = states.current()
    assert alert.state == "pending" and alert.active_since_ms == T0 + 120 * S
    assert steps(states, r, [(180, True)]) == [(180, "pending", "firing")]


def test_a_pending_alert_that_clears_leaves_the_current_alerts():
    states, r = AlertStates(), rule()
    steps(states, r, [(0, True), (15, False)])
    assert states.current() == []


def test_values_and_summaries_follow_the_findings_without_a_transition():
    states, r = AlertStates(), rule(for_seconds=0)
    states.apply(r, [finding(1)], T0)
    assert states.apply(r, [finding(7)], T0 + 15 * S) == []
    (alert,) = states.current()
    assert alert.value == 7 and alert.summary == "7 failures" and alert.timestamp_ms == T0


def test_each_label_set_is_its_own_alert():
    states, r = AlertStates(), rule(for_seconds=0)
    other = (("engine", "trino"), ("instance", "all"))
    states.apply(r, [finding(labels=LABELS), finding(labels=other)], T0)
    transitions = states.apply(r, [finding(labels=other)], T0 + 15 * S)
    assert [(dict(t.alert.labels)["engine"], t.alert.state) for t in transitions] == [("duckdb", "resolved")]
    assert states.counts() == {("EngineConnectionFailure", "firing"): 1}


def test_an_incomplete_evaluation_resolves_nothing():
    states, r = AlertStates(), rule(for_seconds=0)
    states.apply(r, [finding()], T0)
    assert states.apply(r, [], T0 + 15 * S, complete=False) == []
    assert states.current()[0].state == "firing"


def test_two_rules_of_one_alert_name_do_not_resolve_each_other():
    states = AlertStates()
    bytes_rule = rule(for_seconds=0, rule_id="StreamBacklog:bytes", name="StreamBacklog")
    lag_rule = rule(for_seconds=0, rule_id="StreamBacklog:lag", name="StreamBacklog")
    states.apply(bytes_rule, [finding(labels=(("subscription", "storage"),))], T0)
    assert states.apply(lag_rule, [], T0 + 15 * S) == []
    assert states.counts() == {("StreamBacklog", "firing"): 1}


def test_states_reloaded_from_records_continue_where_they_were():
    states, r = AlertStates(), rule(for_seconds=60)
    states.apply(r, [finding()], T0)
    reloaded = AlertStates(states.current())
    assert reloaded.apply(r, [finding()], T0 + 60 * S)[0].alert.active_since_ms == T0

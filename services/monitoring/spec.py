"""Validation of monitoring requests; every rejection names its field."""

from __future__ import annotations

from libs.errors import InvalidArgument
from libs.timeparse import parse_duration_ms
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.monitoring.alert_rules import RULE_NAMES, SEVERITIES
from services.monitoring.panels import DASHBOARD_TYPES, MAX_PANEL_POINTS, PANEL_AGGREGATIONS, USES
from services.monitoring.selectors import parse_selectors
from services.realtime.ingest import DATASOURCE

SCOPES = ("platform", "service", "simulation", "resource")
MONITOR_MAX_RANGE_MS = 31 * 86_400_000
MAX_NAME = 200
MAX_REFRESH_SECONDS = 86_400
HOUR_MS = 3_600_000
ALERT_STATES = ("pending", "firing", "resolved", "inactive", "active")
ALERT_LIST_MAX = 1000


def check_monitor(request: pb.MonitorRequest) -> None:
    """A scope must be one of the four; service and simulation need an id, platform takes none;
    the time range is a duration of at most MONITOR_MAX_RANGE."""
    if request.scope not in SCOPES:
        raise InvalidArgument(f"{request.scope!r} is not a scope; use one of {', '.join(SCOPES)}", "scope")
    if request.scope in ("service", "simulation") and not request.id.strip():
        raise InvalidArgument(f"the {request.scope} scope needs an id (?id=<{request.scope} name>)", "id")
    if request.scope == "platform" and request.id:
        raise InvalidArgument("the platform scope takes no id", "id")
    if request.time_range:
        lookback = parse_duration_ms(request.time_range, "time_range")
        if lookback > MONITOR_MAX_RANGE_MS:
            raise InvalidArgument("at most 31d: monitor scopes summarise recent behaviour", "time_range")


def check_create_dashboard(request: pb.CreateDashboardRequest) -> None:
    """A dashboard needs a name, one of the layouts as type, a refresh interval from 0 (the
    default, 30 s) to a day, and a config whose time range, step, aggregation, datasource and
    lists are well formed. Metrics, services and simulations need not exist (yet)."""
    if not request.name.strip():
        raise InvalidArgument("must not be empty", "name")
    if len(request.name) > MAX_NAME:
        raise InvalidArgument(f"at most {MAX_NAME} characters", "name")
    if not request.type.strip():
        raise InvalidArgument("must not be empty", "type")
    if request.type.strip() not in DASHBOARD_TYPES:
        raise InvalidArgument(
            f"{request.type!r} is not a dashboard type; use one of {', '.join(DASHBOARD_TYPES)}", "type"
        )
    if request.refresh_interval < 0:
        raise InvalidArgument("must not be negative", "refresh_interval")
    if request.refresh_interval > MAX_REFRESH_SECONDS:
        raise InvalidArgument(f"at most {MAX_REFRESH_SECONDS} seconds (a day)", "refresh_interval")
    _check_config(request.config, request.type.strip())


def _check_config(config: pb.DashboardConfig, dashboard_type: str) -> None:
    range_ms = parse_duration_ms(config.time_range, "config.time_range") if config.time_range else HOUR_MS
    if config.step:
        step_ms = parse_duration_ms(config.step, "config.step")
        if step_ms > range_ms:
            raise InvalidArgument(f"{config.step!r} is longer than the time range", "config.step")
        if range_ms / step_ms > MAX_PANEL_POINTS:
            raise InvalidArgument(
                f"{config.step!r} over {config.time_range or '1h'} gives {range_ms // step_ms} points per "
                f"series; a panel shows at most {MAX_PANEL_POINTS}",
                "config.step",
            )
    if config.aggregation and config.aggregation not in PANEL_AGGREGATIONS:
        raise InvalidArgument(
            f"{config.aggregation!r} is not a panel aggregation; use one of {', '.join(PANEL_AGGREGATIONS)}",
            "config.aggregation",
        )
    if config.datasource and not DATASOURCE.fullmatch(config.datasource):
        raise InvalidArgument(f"{config.datasource!r} must match {DATASOURCE.pattern}", "config.datasource")
    for name in ("services", "simulations", "metrics"):
        values = getattr(config, name)
        for i, value in enumerate(values):
            if not value.strip():
                raise InvalidArgument("must not be empty", f"config.{name}[{i}]")
        if name != "metrics" and values and name not in USES[dashboard_type]:
            raise InvalidArgument(
                f"the {dashboard_type} layout does not show {name}; it uses {' and '.join(USES[dashboard_type])}",
                f"config.{name}",
            )


def check_dashboard_key(key: str, field: str) -> None:
    """A dashboard id or type must be given."""
    if not key.strip():
        raise InvalidArgument("must not be empty", field)


def check_update_dashboard(request: pb.UpdateDashboardRequest) -> None:
    """An update names the dashboard and carries a whole valid dashboard."""
    check_dashboard_key(request.id, "id")
    check_create_dashboard(
        pb.CreateDashboardRequest(
            name=request.name,
            type=request.type,
            config=request.config,
            refresh_interval=request.refresh_interval,
        )
    )


def check_list_alerts(request: pb.ListAlertsRequest) -> None:
    """Filters: a known state, rule name and severity, a duration, a limit of 0 (100) to 1000."""
    if request.state and request.state not in ALERT_STATES:
        raise InvalidArgument(
            f"{request.state!r} is not a state; use one of {', '.join(ALERT_STATES)}", "state"
        )
    if request.name and request.name not in RULE_NAMES:
        raise InvalidArgument(
            f"{request.name!r} is not an alert rule; the rules are {', '.join(RULE_NAMES)}", "name"
        )
    if request.severity and request.severity not in SEVERITIES:
        raise InvalidArgument(
            f"{request.severity!r} is not a severity; use one of {', '.join(SEVERITIES)}", "severity"
        )
    if request.time_range:
        parse_duration_ms(request.time_range, "time_range")
    if not 0 <= request.limit <= ALERT_LIST_MAX:
        raise InvalidArgument(f"must be between 1 and {ALERT_LIST_MAX} (0 means 100)", "limit")


def check_export(request: pb.ExportPrometheusRequest) -> None:
    """Every `match[]` must be a Prometheus series selector (400 naming `match[]` and why)."""
    parse_selectors(list(request.match))

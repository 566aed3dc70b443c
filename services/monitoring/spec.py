"""Validation of monitoring requests; every rejection names its field."""

from __future__ import annotations

from libs.errors import InvalidArgument
from libs.timeparse import parse_duration_ms
from platformq.analytics.v1 import monitoring_service_pb2 as pb

SCOPES = ("platform", "service", "simulation", "resource")


def check_monitor(request: pb.MonitorRequest) -> None:
    """A scope must be one of the four; services, simulations and resources need an id."""
    if request.scope not in SCOPES:
        raise InvalidArgument(f"{request.scope!r} is not a scope; use one of {', '.join(SCOPES)}", "scope")
    if request.time_range:
        parse_duration_ms(request.time_range, "time_range")


def check_create_dashboard(request: pb.CreateDashboardRequest) -> None:
    """A dashboard needs a name, a type, a sane refresh interval and a valid time range."""
    if not request.name.strip():
        raise InvalidArgument("must not be empty", "name")
    if not request.type.strip():
        raise InvalidArgument("must not be empty", "type")
    if request.refresh_interval < 0:
        raise InvalidArgument("must not be negative", "refresh_interval")
    if request.config.time_range:
        parse_duration_ms(request.config.time_range, "config.time_range")


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
    """Filters are checked by the alerts issue's rules (placeholder: time range only)."""
    if request.time_range:
        parse_duration_ms(request.time_range, "time_range")


def check_export(request: pb.ExportPrometheusRequest) -> None:
    """Selectors are checked where they are parsed (placeholder)."""

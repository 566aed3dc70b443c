"""Who a request comes from: its tenant and scopes, as Envoy passes them to the services.

Envoy decides who the caller is (docs/tenants.md) and sets two request headers, which it strips from
what callers send in every AUTH_MODE: `x-platformq-tenant` (the tenant id) and `x-platformq-scopes`
(space-separated scopes: read, write, admin). With AUTH_MODE=none Envoy sets neither, and a request
without them is tenant `default` with every scope; with AUTH_MODE=jwt a request without a tenant
reached the service around Envoy and is refused UNAUTHENTICATED.

The one server interceptor reads the identity once per call (`identity_from_metadata`), checks the
scope the method needs (`REQUIRED_SCOPES`) and makes it the call's identity (`current_identity`),
which servicers pass to their cores and peer clients forward on the calls they make for it
(`outgoing_metadata`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import grpc

from libs.errors import AnalyticsError
from libs.storage import DEFAULT_TENANT

TENANT_HEADER = "x-platformq-tenant"
SCOPES_HEADER = "x-platformq-scopes"

READ, WRITE, ADMIN = "read", "write", "admin"
ALL_SCOPES = frozenset({READ, WRITE, ADMIN})

TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
"""A tenant id: it becomes part of file paths (`tenant=<id>/`) and names, so letters, digits, `_`
and `-` only, starting with a letter or digit, at most 63 characters."""

AUTH_MODES = ("none", "jwt")


class Unauthenticated(AnalyticsError):
    """The request carries no valid identity."""

    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AnalyticsError):
    """The caller's scopes do not allow the method; the reason names the missing scope."""

    status = grpc.StatusCode.PERMISSION_DENIED


@dataclass(frozen=True)
class Identity:
    """A caller: the tenant whose data every read and write of the request touches, and its scopes."""

    tenant: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """True when the caller holds `scope`."""
        return scope in self.scopes

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The identity as the gRPC metadata Envoy sets, for calls made on the caller's behalf."""
        return ((TENANT_HEADER, self.tenant), (SCOPES_HEADER, " ".join(sorted(self.scopes))))


SYSTEM = Identity(DEFAULT_TENANT, ALL_SCOPES)
"""The service's own identity: the operator's tenant `default` with every scope. What a request has
with AUTH_MODE=none and no headers, and what the service's own background work (self-metrics,
alert rules) acts as."""


def check_tenant(tenant: str) -> str:
    """`tenant` when it is a valid tenant id; otherwise Unauthenticated naming it (the id came from
    the caller's credentials, not from a request field, so the caller cannot fix it by editing the
    request)."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise Unauthenticated(
            "must be 1 to 63 letters, digits, '_' or '-', starting with a letter or digit", TENANT_HEADER
        )
    return tenant


def parse_scopes(value: str) -> frozenset[str]:
    """The known scopes in a space-separated list; unknown words grant nothing."""
    return frozenset(value.split()) & ALL_SCOPES


def identity_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None, auth_mode: str) -> Identity:
    """The caller's identity from a call's metadata (the headers Envoy set).

    Without a tenant header: with AUTH_MODE=none the service's own identity (tenant `default`, every
    scope, as before authentication existed); with AUTH_MODE=jwt Unauthenticated, since only a call
    that went around Envoy lacks it. A tenant header without a scopes header grants no scope."""
    if auth_mode not in AUTH_MODES:
        raise ValueError(f"unknown AUTH_MODE {auth_mode!r}; one of {', '.join(AUTH_MODES)}")
    tenant: str | None = None
    scopes = ""
    for key, value in metadata or ():
        text = value.decode() if isinstance(value, bytes) else value
        if key == TENANT_HEADER:
            tenant = text
        elif key == SCOPES_HEADER:
            scopes = text
    if tenant is None:
        if auth_mode == "jwt":
            raise Unauthenticated("no tenant: the request did not come through the gateway", TENANT_HEADER)
        return SYSTEM
    return Identity(check_tenant(tenant), parse_scopes(scopes))


_CURRENT: ContextVar[Identity | None] = ContextVar("platformq_identity", default=None)
"""The identity of the call being served, set by the interceptor in the call's own task, so it is
seen by that call's code (and tasks it starts) only and ends with the call."""


def set_current_identity(identity: Identity) -> None:
    """Make `identity` the current call's identity (the interceptor does this once per call)."""
    _CURRENT.set(identity)


def current_identity() -> Identity:
    """The identity of the call being served; the service's own (`SYSTEM`) outside any call, as for
    background work and for in-process callers in AUTH_MODE=none."""
    return _CURRENT.get() or SYSTEM


def outgoing_metadata(identity: Identity | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata for a call to a peer service on behalf of `identity` (default: the current call's,
    or the service's own outside any call), so the peer reads and writes the same tenant."""
    return (identity or current_identity()).metadata()


def scope_table(rows: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """{full method path: scope} from (service, method, scope) rows."""
    return {f"/platformq.analytics.v1.{service}/{method}": scope for service, method, scope in rows}


def _detect_scope(request: object) -> str:
    # A stored selection's anomalies are kept (a write); a snapshot or inline series stores nothing.
    return WRITE if request.HasField("selection") else READ  # type: ignore[attr-defined]


def _maintenance_scope(request: object) -> str:
    # A `sensors` reading is appended to the entity's stored history; inline readings store nothing.
    return WRITE if len(request.sensors) else READ  # type: ignore[attr-defined]


def _export_scope(request: object) -> str:
    # The service's own metrics (no match[]) are the operator's; stored series are the tenant's.
    return READ if len(request.match) else ADMIN  # type: ignore[attr-defined]


REQUIRED_SCOPES: dict[str, str] = scope_table(
    [
        ("QueryService", "Query", READ),
        ("QueryService", "QueryTimeseries", READ),
        ("QueryService", "Explain", READ),
        ("QueryService", "GetCapabilities", READ),
        ("QueryService", "GetMetadata", READ),
        ("RealtimeService", "IngestMetrics", WRITE),
        ("RealtimeService", "IngestMetricsStream", WRITE),
        ("RealtimeService", "Subscribe", READ),
        ("MLService", "DetectAnomalies", READ),
        ("MLService", "ListAnomalies", READ),
        ("MLService", "GetAnomalyStats", READ),
        ("MLService", "SubmitAnomalyFeedback", WRITE),
        ("MLService", "Forecast", READ),
        ("MLService", "PredictMaintenance", READ),
        ("MLService", "TrainMaintenance", WRITE),
        ("MLService", "TrainOnline", WRITE),
        ("MLService", "PredictOnline", READ),
        ("MonitoringService", "Monitor", READ),
        ("MonitoringService", "GetDashboard", READ),
        ("MonitoringService", "ListDashboards", READ),
        ("MonitoringService", "CreateDashboard", WRITE),
        ("MonitoringService", "UpdateDashboard", WRITE),
        ("MonitoringService", "DeleteDashboard", WRITE),
        ("MonitoringService", "ListAlerts", READ),
        ("MonitoringService", "ExportPrometheus", READ),
    ]
)
"""The scope each RPC needs (docs/tenants.md has the same table with the reasons). Health and
reflection are not ours and need none. `admin`: the export of the service's own metrics (below);
there is no retention or model-deletion RPC yet (retention is a setting)."""

SCOPE_BY_REQUEST: dict[str, Callable[[object], str]] = {
    "/platformq.analytics.v1.MLService/DetectAnomalies": _detect_scope,
    "/platformq.analytics.v1.MLService/PredictMaintenance": _maintenance_scope,
    "/platformq.analytics.v1.MonitoringService/ExportPrometheus": _export_scope,
}
"""RPCs whose scope depends on the request: whether it stores something."""


def required_scope(method: str, request: object | None = None) -> str | None:
    """The scope `method` needs for `request` (None: not one of ours, none needed)."""
    refine = SCOPE_BY_REQUEST.get(method)
    if refine is not None and request is not None:
        return refine(request)
    return REQUIRED_SCOPES.get(method)


@contextmanager
def acting_as(identity: Identity) -> Iterator[None]:
    """Within the block, peer calls are made for `identity`: background work of the service on a
    tenant's behalf (the live scorer warming a series of that tenant) reads that tenant's data."""
    token = _CURRENT.set(identity)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def reader_of(tenant: str) -> Identity:
    """The identity of background work that only reads `tenant`'s data."""
    return Identity(tenant, frozenset({READ}))

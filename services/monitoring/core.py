"""The monitoring core: delegates each operation to its component. No gRPC here.

Components: `scopes.Scopes` (monitor scopes), `dashboards.Dashboards` (stored and built-in
dashboards, panel data, live refresh), `alerts.AlertEngine` (rules, states, history) and
`export.PrometheusExport` (self-metrics and stored series in the text exposition format).
"""

from __future__ import annotations

from google.api import httpbody_pb2

from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.monitoring.alerts import AlertEngine
from services.monitoring.dashboards import Dashboards
from services.monitoring.export import PrometheusExport
from services.monitoring.scopes import Scopes


class MonitoringCore:
    """Summarises scopes, keeps dashboards, evaluates alerts and exports metrics."""

    def __init__(
        self, scopes: Scopes, dashboards: Dashboards, alerts: AlertEngine, export: PrometheusExport
    ) -> None:
        self.scopes = scopes
        self.dashboards = dashboards
        self.alerts = alerts
        self.export = export

    async def monitor(self, request: pb.MonitorRequest) -> pb.MonitorResponse:
        """Summarise one scope (its reads carry the caller's identity: reader.py)."""
        return await self.scopes.monitor(request)

    async def get_dashboard(self, key: str, tenant: str) -> pb.GetDashboardResponse:
        """A tenant's dashboard (by id, built-in type or stored type) with its panel data."""
        return await self.dashboards.get(key, tenant)

    async def list_dashboards(
        self, request: pb.ListDashboardsRequest, tenant: str
    ) -> pb.ListDashboardsResponse:
        """Built-in and the tenant's stored dashboards, without panel data."""
        return await self.dashboards.list(request, tenant)

    async def create_dashboard(
        self, request: pb.CreateDashboardRequest, tenant: str
    ) -> pb.CreateDashboardResponse:
        """Store a dashboard of the tenant."""
        return await self.dashboards.create(request, tenant)

    async def update_dashboard(
        self, request: pb.UpdateDashboardRequest, tenant: str
    ) -> pb.UpdateDashboardResponse:
        """Replace a stored dashboard of the tenant."""
        return await self.dashboards.update(request, tenant)

    async def delete_dashboard(self, dashboard_id: str, tenant: str) -> pb.DeleteDashboardResponse:
        """Remove a stored dashboard of the tenant."""
        return await self.dashboards.delete(dashboard_id, tenant)

    async def list_alerts(self, request: pb.ListAlertsRequest, tenant: str) -> pb.ListAlertsResponse:
        """Current alerts and their stored history (the service's own: tenant `default` only)."""
        return await self.alerts.list(request, tenant)

    async def export_prometheus(
        self, request: pb.ExportPrometheusRequest, timeout: float | None = None
    ) -> httpbody_pb2.HttpBody:
        """Self-metrics, or with match[] the latest stored values, for Prometheus."""
        return await self.export.render(request, timeout)

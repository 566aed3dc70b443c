"""The monitoring core: scopes, dashboards, alerts and the Prometheus export. No gRPC here."""

from __future__ import annotations

from libs.errors import NotBuilt

_MON = "it arrives with the monitoring issue (dashboards, alerts, self-metrics)"


class MonitoringCore:
    """Summarises scopes, keeps dashboards and exports the service's own metrics."""

    async def monitor(self, request: object) -> object:
        """Summarise one scope."""
        raise NotBuilt(f"monitor scopes are not built yet: {_MON}")

    async def get_dashboard(self, dashboard_type: str) -> object:
        """Return a dashboard and its panel data."""
        raise NotBuilt(f"dashboards are not built yet: {_MON}")

    async def create_dashboard(self, request: object) -> object:
        """Store a dashboard."""
        raise NotBuilt(f"dashboards are not built yet: {_MON}")

    async def export_prometheus(self) -> object:
        """Render the service's metrics in the Prometheus text format."""
        raise NotBuilt(f"the Prometheus export is not built yet: {_MON}")

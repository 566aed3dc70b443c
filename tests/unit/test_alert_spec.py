"""ListAlerts filters: each bad one is refused naming its field."""

from __future__ import annotations

import pytest

from libs.errors import InvalidArgument
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.monitoring.spec import check_list_alerts


@pytest.mark.parametrize(
    ("request_fields", "field", "says"),
    [
        ({"state": "burning"}, "state", "pending, firing, resolved, inactive, active"),
        ({"name": "SlowQuery"}, "name", "SlowBatchQuery"),
        ({"severity": "page"}, "severity", "warning, critical"),
        ({"time_range": "yesterday"}, "time_range", "not a duration"),
        ({"limit": -1}, "limit", "between 1 and 1000"),
        ({"limit": 1001}, "limit", "between 1 and 1000"),
    ],
)
def test_a_bad_filter_names_its_field(request_fields, field, says):
    with pytest.raises(InvalidArgument) as err:
        check_list_alerts(pb.ListAlertsRequest(**request_fields))
    assert err.value.field == field and says in err.value.reason


def test_good_filters_pass():
    check_list_alerts(pb.ListAlertsRequest())
    check_list_alerts(
        pb.ListAlertsRequest(
            state="active", name="StreamBacklog", severity="critical", time_range="7d", limit=1000
        )
    )

"""The usage chart's arithmetic: days in the admin's time zone, stacked parts adding up."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from adapters.admin._charts import daily_spend_chart

pytestmark = pytest.mark.timeout(10)


def test_spend_falls_on_the_admins_day_and_stacks_by_workspace() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    rows = [
        (datetime(2026, 11, 30, 23, 30, tzinfo=UTC), "slack", "T1", 1.25),  # 1 December in Berlin
        (datetime(2026, 12, 1, 8, 0), "slack", "T1", 0.75),  # naive: stored UTC
        (datetime(2026, 12, 1, 9, 0, tzinfo=UTC), "discord", "G9", 3.0),
        (datetime(2026, 12, 14, 12, 0, tzinfo=UTC), "slack", "T1", 0.5),
    ]
    chart = daily_spend_chart(rows, berlin, date(2026, 12, 15))
    assert len(chart.bars) == 31 and chart.top == 5.0
    first = chart.bars[0]
    assert first.day == date(2026, 12, 1) and first.total == pytest.approx(5.0)
    assert {p.series: p.value for p in first.parts} == {"slack:T1": 2.0, "discord:G9": 3.0}
    assert first.parts[0].y + first.parts[0].height == pytest.approx(chart.baseline)  # stacked from the axis
    assert first.parts[1].y + first.parts[1].height == pytest.approx(first.parts[0].y)
    assert chart.bars[13].total == pytest.approx(0.5) and chart.bars[14].parts == []
    assert [name for name, _ in chart.series] == ["discord:G9", "slack:T1"]
    assert sum(p.value for bar in chart.bars for p in bar.parts) == pytest.approx(5.5)


def test_an_empty_month_draws_an_empty_chart() -> None:
    chart = daily_spend_chart([], ZoneInfo("UTC"), date(2026, 2, 3))
    assert len(chart.bars) == 28 and chart.series == [] and all(not bar.parts for bar in chart.bars)

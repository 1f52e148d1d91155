"""The daily spend chart as data for an inline SVG: one bar a day, stacked by workspace.

Drawn on the server, so the page needs no chart script, works without a network and shows the
same numbers as the table and the CSV (each bar part carries its dollar value).
"""

from __future__ import annotations

import calendar
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

# Colour-blind-safe (Okabe–Ito), readable on light and dark backgrounds.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 260, 48, 24, 12


@dataclass(frozen=True)
class Part:
    series: str
    value: float
    y: float
    height: float
    color: str


@dataclass(frozen=True)
class Bar:
    day: date
    x: float
    width: float
    total: float
    parts: list[Part]


@dataclass(frozen=True)
class StackedBars:
    bars: list[Bar]
    series: list[tuple[str, str]]  # (name, colour), for the legend
    ticks: list[tuple[float, str]]  # (y, label)
    top: float
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    baseline: float = HEIGHT - BOTTOM


def _nice_top(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value``: the axis top."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if value <= m * magnitude * (1 + 1e-9))


def daily_spend_chart(rows: Iterable[tuple[datetime, str, str, float]], zone: ZoneInfo, today: date) -> StackedBars:
    """Bars for each day of ``today``'s month up to today, in the admin's time zone."""
    by_day: dict[date, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for created, platform, workspace, cost in rows:
        moment = created if created.tzinfo else created.replace(tzinfo=UTC)
        by_day[moment.astimezone(zone).date()][f"{platform}:{workspace}"] += cost
    names = sorted({name for spend in by_day.values() for name in spend})
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    days = calendar.monthrange(today.year, today.month)[1]
    top = _nice_top(max((sum(s.values()) for s in by_day.values()), default=0.0))
    plot_h = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT) / days
    bars = []
    for n in range(1, days + 1):
        day = date(today.year, today.month, n)
        spend = by_day.get(day, {})
        y = HEIGHT - BOTTOM
        parts = []
        for name in names:
            value = spend.get(name, 0.0)
            if value <= 0:
                continue
            height = value / top * plot_h
            y -= height
            parts.append(Part(name, round(value, 4), round(y, 2), round(height, 2), colors[name]))
        bars.append(Bar(day, round(LEFT + (n - 1) * slot + slot * 0.15, 2), round(slot * 0.7, 2),
                        round(sum(spend.values()), 4), parts))
    ticks = [(round(HEIGHT - BOTTOM - plot_h * f, 2), f"${top * f:,.2f}") for f in (0, 0.5, 1)]
    return StackedBars(bars, [(name, colors[name]) for name in names], ticks, top)

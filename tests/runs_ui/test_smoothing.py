"""The one smoothing implementation: the charts' debiased EMA in static/js/live_chart.js, used by the
run page and the comparison (the API returns series as stored). Loaded into Chromium on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

LIVE_CHART = Path(__file__).resolve().parents[2] / "static" / "js" / "live_chart.js"

pytestmark = pytest.mark.browser


def test_the_charts_ema_is_debiased_skips_gaps_and_continues_appended_points(page):
    page.set_content("<html><body></body></html>")
    page.add_script_tag(path=str(LIVE_CHART))
    smooth = "([values, alpha]) => RftSmoothing.smoothSeries(values, alpha)"
    # a = 0.5: ema1 = 0.5 / (1 - 0.5) = 1; ema2 = (0.25 + 1) / 0.75 = 5/3; ema3 = (0.625 + 1.5) / 0.875.
    assert page.evaluate(smooth, [[1, 2, 3], 0.5]) == pytest.approx([1, 5 / 3, 2.125 / 0.875])
    # Debiased: the first point is the first value, not pulled toward 0.
    assert page.evaluate(smooth, [[10], 0.9]) == pytest.approx([10])
    # A gap passes through and does not advance the average; 0 returns the values as stored.
    assert page.evaluate(smooth, [[1, None, 2], 0.5]) == [1, None, pytest.approx(5 / 3)]
    assert page.evaluate(smooth, [[4, 2], 0]) == [4, 2]
    # Points appended live continue the same curve as smoothing the whole series at once.
    appended = page.evaluate(
        """() => {
            const state = { ema: 0, weight: 0 };
            return [1, 2, 3, 10, -4].map((y) => RftSmoothing.smoothPoint(state, 0.6, y));
        }"""
    )
    assert appended == pytest.approx(page.evaluate(smooth, [[1, 2, 3, 10, -4], 0.6]))

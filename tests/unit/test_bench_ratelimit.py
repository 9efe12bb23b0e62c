"""bench.ratelimit's arithmetic (no services): the queue rates it gives the limiter and the
steady-state rate it reports beside the whole run's."""

from __future__ import annotations

import math

from bench.ratelimit import product_rates, steady_rate
from core.settings import Settings


def test_the_limiter_runs_with_the_products_rates_scaled_to_the_simulators_limit() -> None:
    defaults = Settings()
    assert product_rates(200 / 60) == {
        "broker_max_activities_per_second": defaults.broker_max_activities_per_second,
        "broker_asks_max_activities_per_second": defaults.broker_asks_max_activities_per_second,
    }
    assert product_rates(400 / 60)["broker_max_activities_per_second"] == round(
        2 * defaults.broker_max_activities_per_second, 3
    )


def test_steady_rate_leaves_the_ramp_and_the_drain_out() -> None:
    # 2 requests a second for 10 s, between a slow first second and a slow last ten.
    samples = [(0.0, 0), (1.0, 1)]
    samples += [(1.0 + t, 1 + 2 * t) for t in range(1, 11)]
    samples += [(11.0 + t, 21 + t // 5) for t in range(1, 11)]
    total = samples[-1][1]
    assert total == 23
    assert steady_rate(samples) == 2.0
    assert samples[-1][1] / samples[-1][0] < 1.1  # the whole run's rate
    assert math.isnan(steady_rate([(0.0, 5), (1.0, 5)]))

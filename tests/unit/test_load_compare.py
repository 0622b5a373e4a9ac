"""tests/load/compare.py's arithmetic: medians per arm, what a clean rate is,
the highest clean rate, and the ratios it prints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "load"))

import compare  # noqa: E402


def run(target: str, rate: float = 3000, *, cpu: dict[str, float] | None = None,
        p99: float = 10.0, lost: int = 0, dup: int = 0, achieved: int = 30_000,
        members: int = 10) -> dict[str, Any]:
    cpu = cpu or ({"gateway-1": 10.0, "gateway-2": 10.0, "nats": 8.0, "history": 3.0,
                   "postgres": 2.0} if target == "stack"
                  else {"relay-1": 9.0, "relay-2": 9.0, "nats": 2.0})
    return {
        "target": target, "rate": rate, "lost": lost, "duplicated": dup,
        "expected_deliveries": 1000, "deliveries_per_s": achieved,
        "offered_deliveries_per_s": round(rate * members),
        "latency_ms": {"p50": p99 / 4, "p90": p99 / 2, "p99": p99, "max": p99 * 2},
        "cpu_us_per_delivery": sum(cpu.values()),
        "cpu_us_per_delivery_by_process": cpu,
        "client_cpu_s": 1.0, "window_s": 10.0,
    }


def test_summary_takes_medians_and_groups_processes() -> None:
    runs = [run("stack", p99=p, cpu={"gateway-1": g, "gateway-2": g, "nats": n,
                                     "postgres": 1.0})
            for p, g, n in ((10, 10, 5), (30, 12, 9), (20, 11, 7))]
    s = compare.summarize(runs)
    assert s["p99"] == 20
    assert s["p99_range"] == (10, 30)
    assert s["cpu_us_by_process"] == {"gateway-1": 11, "gateway-2": 11, "nats": 7,
                                      "postgres": 1.0}
    assert s["cpu_us_by_group"] == {"front": 22, "nats": 7, "rest": 1.0}
    assert s["cpu_us"] == 30.0  # the median of the totals, not a sum of medians


def test_clean_means_no_loss_p99_within_100ms_and_95_percent_achieved() -> None:
    def clean(**kw: Any) -> bool:
        return compare.is_clean(compare.summarize([run("baseline", **kw)]))

    assert clean()
    assert not clean(lost=1)
    assert not clean(dup=1)
    assert clean(p99=100.0)
    assert not clean(p99=100.1)
    assert clean(achieved=28_500)
    assert not clean(achieved=28_499)


def test_highest_clean_rate_is_the_highest_clean_one_even_above_a_dirty_one() -> None:
    runs = [run("stack", 1000, achieved=10_000), run("stack", 2000, achieved=20_000, p99=150),
            run("stack", 3000, achieved=30_000), run("stack", 4500, achieved=30_000)]
    summaries = compare.by_arm_and_rate(runs)
    assert compare.highest_clean(summaries["stack"]) == (3000, 30_000)
    assert compare.highest_clean({}) is None


def test_compare_table_prints_ratios_stack_over_baseline() -> None:
    stack = compare.summarize([run("stack")])
    base = compare.summarize([run("baseline")])
    table = compare.compare_table(stack, base)
    assert "| CPU µs per delivery, all processes | 33.0 (33.0–33.0) | 20.0 (20.0–20.0) | 1.65× |" \
        in table
    assert "| … … gateway-1 / relay-1 | 10.0 | 9.0 | 1.11× |" in table
    assert "| … … nats | 8.0 | 2.0 | 4.00× |" in table
    assert "| … … history | 3.0 | — |  |" in table


def test_sweep_table_names_each_arms_highest_clean_rate() -> None:
    runs = [run("stack", 1000, achieved=10_000), run("baseline", 1000, achieved=10_000),
            run("stack", 2000, achieved=20_000, lost=3), run("baseline", 2000, achieved=20_000)]
    text = compare.sweep_table(compare.by_arm_and_rate(runs))
    assert "highest clean rate, stack: 1,000 sends/s = 10,000 deliveries/s" in text
    assert "highest clean rate, baseline: 2,000 sends/s = 20,000 deliveries/s" in text
    assert "stack / baseline: 0.50×" in text


def test_saturated_is_loss_or_throughput_not_latency() -> None:
    def saturated(**kw: Any) -> bool:
        return compare.saturated(compare.summarize([run("stack", **kw)]))

    assert not saturated(p99=900.0)
    assert saturated(lost=1)
    assert saturated(achieved=28_000)

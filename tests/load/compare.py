"""The stack against the baseline relay, interleaved, with the same generator.

Runs fanout.py's generator against a fresh ``stack`` (NATS + JetStream,
PostgreSQL, auth, history, presence, two gateways) and a fresh ``baseline``
(core nats-server and two ``relay_baseline.py``: no auth, no persistence)
in turns — A B A B … — so that whatever else loads the machine falls on both
arms alike, then prints the medians of each arm and the ratios
stack/baseline: CPU µs per delivery (all processes, and by process),
latency percentiles, lost/duplicated, deliveries per second.

    .venv/bin/python tests/load/compare.py --pairs 3 --rate 3000 --duration 20
    .venv/bin/python tests/load/compare.py --rooms 1 --members 2000 --rate 20
    .venv/bin/python tests/load/compare.py --sweep --duration 10

``--sweep`` runs rising rates (``--rates``, sends/s), both arms interleaved
at each, and reports each arm's highest clean rate: no message lost or
doubled, p99 ≤ 100 ms, and at least 95 % of the offered deliveries per
second achieved (medians over ``--pairs`` runs per rate; an arm stops
climbing after two rates in a row where it lost messages or fell under 95 %
of the offered rate). Both modes draw PNGs
into ``--plots`` (tests/load/plots/): CPU per delivery by process, stacked,
each arm; and p50/p99 latency against deliveries per second. ``--json``
keeps every run's raw result; ``--report FILE`` prints and draws one again.

The generator shares the machine's cores with what it measures; its own CPU
is reported (``client CPU``) and counted in neither arm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ARMS = ("stack", "baseline")
DEFAULT_RATES = (1000, 2000, 3000, 4500, 6000, 8000)
PLOTS = Path(__file__).with_name("plots")

# What "clean" means for a rate (issue 13).
CLEAN_P99_MS = 100.0
CLEAN_ACHIEVED = 0.95

# Processes grouped for the ratios: the two arms' processes differ by name.
FRONT = {"gateway-1", "gateway-2", "relay-1", "relay-2"}

Run = dict[str, Any]


# --- summaries (pure) ----------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def group_of(process: str) -> str:
    """``front`` (gateways, relays), ``nats``, or ``rest`` (the stack's services and
    PostgreSQL: what the baseline has no counterpart of)."""
    if process in FRONT:
        return "front"
    if process == "nats":
        return "nats"
    return "rest"


def summarize(runs: Sequence[Run]) -> dict[str, Any]:
    """Medians (and ranges) of one arm's runs at one load."""
    processes = sorted({p for r in runs for p in r["cpu_us_per_delivery_by_process"]})
    by_process = {p: median(r["cpu_us_per_delivery_by_process"].get(p) for r in runs)
                  for p in processes}
    groups: dict[str, float | None] = {}
    for g in ("front", "nats", "rest"):
        members = [p for p in processes if group_of(p) == g]
        groups[g] = median(sum(r["cpu_us_per_delivery_by_process"].get(p, 0.0)
                               for p in members) for r in runs) if members else None
    cpu = [r["cpu_us_per_delivery"] for r in runs]
    return {
        "runs": len(runs),
        "cpu_us": median(cpu), "cpu_us_range": (min(cpu), max(cpu)) if cpu else None,
        "cpu_us_by_process": by_process,
        "cpu_us_by_group": groups,
        "p50": median(r["latency_ms"]["p50"] for r in runs),
        "p90": median(r["latency_ms"]["p90"] for r in runs),
        "p99": median(r["latency_ms"]["p99"] for r in runs),
        "p99_range": (min(r["latency_ms"]["p99"] for r in runs),
                      max(r["latency_ms"]["p99"] for r in runs)) if runs else None,
        "lost": sum(r["lost"] for r in runs),
        "duplicated": sum(r["duplicated"] for r in runs),
        "expected": sum(r["expected_deliveries"] for r in runs),
        "deliveries_per_s": median(r["deliveries_per_s"] for r in runs),
        "offered_deliveries_per_s": median(r["offered_deliveries_per_s"] for r in runs),
        "client_cpu_s": median(r["client_cpu_s"] for r in runs),
        "other_cores": median(r["other_cpu_s"] / r["window_s"] for r in runs
                              if "other_cpu_s" in r and r["window_s"]),
        "window_s": median(r["window_s"] for r in runs),
    }


def is_clean(summary: dict[str, Any]) -> bool:
    """No loss, nothing doubled, p99 ≤ 100 ms, ≥ 95 % of the offered rate achieved."""
    p99 = summary["p99"]
    achieved = summary["deliveries_per_s"] or 0
    offered = summary["offered_deliveries_per_s"] or 0
    return (summary["lost"] == 0 and summary["duplicated"] == 0
            and p99 is not None and p99 == p99 and p99 <= CLEAN_P99_MS
            and achieved >= CLEAN_ACHIEVED * offered)


def saturated(summary: dict[str, Any]) -> bool:
    """Lost or doubled messages, or under 95 % of the offered rate: the arm is
    past its capacity (a p99 over 100 ms alone may be someone else's work)."""
    achieved = summary["deliveries_per_s"] or 0
    offered = summary["offered_deliveries_per_s"] or 0
    return (summary["lost"] > 0 or summary["duplicated"] > 0
            or achieved < CLEAN_ACHIEVED * offered)


def highest_clean(by_rate: dict[float, dict[str, Any]]) -> tuple[float, float] | None:
    """(rate, deliveries/s) of the highest clean rate, or None if none was."""
    clean = [(rate, s["deliveries_per_s"]) for rate, s in by_rate.items() if is_clean(s)]
    return max(clean) if clean else None


def by_arm(runs: Sequence[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {arm: [] for arm in ARMS}
    for r in runs:
        out.setdefault(r["target"], []).append(r)
    return out


def by_arm_and_rate(runs: Sequence[Run]) -> dict[str, dict[float, dict[str, Any]]]:
    out: dict[str, dict[float, dict[str, Any]]] = {}
    for arm, arm_runs in by_arm(runs).items():
        rates = sorted({r["rate"] for r in arm_runs})
        out[arm] = {rate: summarize([r for r in arm_runs if r["rate"] == rate])
                    for rate in rates}
    return out


# --- tables (pure) ---------------------------------------------------------------------


def _num(v: float | None, digits: int = 1) -> str:
    if v is None or v != v:
        return "—"
    return f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    r = ratio(a, b)
    return "—" if r is None else f"{r:.2f}×"


def compare_table(stack: dict[str, Any], base: dict[str, Any]) -> str:
    """Markdown: each arm's medians and stack/baseline."""
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, a: float | None, b: float | None, digits: int = 1,
            with_ratio: bool = True) -> None:
        rows.append((label, _num(a, digits), _num(b, digits),
                     _ratio(a, b) if with_ratio else ""))

    def rng(s: dict[str, Any], key: str) -> str:
        lo_hi = s.get(key)
        return f" ({lo_hi[0]:.1f}–{lo_hi[1]:.1f})" if lo_hi else ""

    rows.append(("CPU µs per delivery, all processes",
                 _num(stack["cpu_us"]) + rng(stack, "cpu_us_range"),
                 _num(base["cpu_us"]) + rng(base, "cpu_us_range"),
                 _ratio(stack["cpu_us"], base["cpu_us"])))
    labels = {"front": "… gateways / relays", "nats": "… NATS",
              "rest": "… history, PostgreSQL, auth, presence"}
    for g, label in labels.items():
        row(label, stack["cpu_us_by_group"].get(g), base["cpu_us_by_group"].get(g),
            with_ratio=g != "rest")
    for slot in _COLORS:
        a_names = [p for p in stack["cpu_us_by_process"] if _slot(p) == slot]
        b_names = [p for p in base["cpu_us_by_process"] if _slot(p) == slot]
        if not a_names and not b_names:
            continue
        a = sum(stack["cpu_us_by_process"][p] or 0.0 for p in a_names) if a_names else None
        b = sum(base["cpu_us_by_process"][p] or 0.0 for p in b_names) if b_names else None
        row(f"… … {' / '.join(a_names + [p for p in b_names if p not in a_names])}", a, b,
            with_ratio=bool(a_names and b_names))
    rows.append(("p50 ms", _num(stack["p50"], 2), _num(base["p50"], 2),
                 _ratio(stack["p50"], base["p50"])))
    rows.append(("p90 ms", _num(stack["p90"], 2), _num(base["p90"], 2),
                 _ratio(stack["p90"], base["p90"])))
    rows.append(("p99 ms", _num(stack["p99"], 2) + rng(stack, "p99_range"),
                 _num(base["p99"], 2) + rng(base, "p99_range"),
                 _ratio(stack["p99"], base["p99"])))
    rows.append(("lost / duplicated (all runs)",
                 f"{stack['lost']} / {stack['duplicated']} of {stack['expected']:,}",
                 f"{base['lost']} / {base['duplicated']} of {base['expected']:,}", ""))
    row("deliveries/s", stack["deliveries_per_s"], base["deliveries_per_s"], 0)
    row("load generator CPU s", stack["client_cpu_s"], base["client_cpu_s"], 2,
        with_ratio=False)
    row("other work on the box, cores", stack.get("other_cores"), base.get("other_cores"), 2,
        with_ratio=False)
    head = (f"| medians of {stack['runs']} / {base['runs']} runs | stack | baseline "
            "| stack / baseline |\n| --- | --- | --- | --- |\n")
    return head + "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)


def sweep_table(summaries: dict[str, dict[float, dict[str, Any]]]) -> str:
    head = ("| sends/s | arm | deliveries/s (offered) | p50 ms | p99 ms | lost / dup "
            "| CPU µs per delivery | other work on the box, cores | clean |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    lines = []
    rates = sorted({rate for arm in summaries.values() for rate in arm})
    for rate in rates:
        for arm in ARMS:
            s = summaries.get(arm, {}).get(rate)
            if s is None:
                lines.append(f"| {rate:,.0f} | {arm} | (not run) | | | | | | |")
                continue
            lines.append(
                f"| {rate:,.0f} | {arm} | {_num(s['deliveries_per_s'], 0)} "
                f"({_num(s['offered_deliveries_per_s'], 0)}) | {_num(s['p50'], 2)} "
                f"| {_num(s['p99'], 2)} | {s['lost']} / {s['duplicated']} "
                f"| {_num(s['cpu_us'])} | {_num(s.get('other_cores'), 2)} "
                f"| {'yes' if is_clean(s) else 'no'} |")
    best = {arm: highest_clean(summaries.get(arm, {})) for arm in ARMS}
    tail = []
    for arm in ARMS:
        b = best[arm]
        tail.append(f"highest clean rate, {arm}: "
                    + (f"{b[0]:,.0f} sends/s = {b[1]:,.0f} deliveries/s" if b else "none"))
    if best["stack"] and best["baseline"]:
        tail.append(f"stack / baseline: {best['stack'][1] / best['baseline'][1]:.2f}×"
                    " (deliveries/s)")
    return head + "\n".join(lines) + "\n\n" + "\n".join(tail)


# --- plots ---------------------------------------------------------------------------

_COLORS = {"front-1": "#1f77b4", "front-2": "#6baed6", "nats": "#ff7f0e",
           "history": "#2ca02c", "postgres": "#98df8a", "auth": "#9467bd",
           "presence": "#c5b0d5"}


def _slot(process: str) -> str:
    if process in ("gateway-1", "relay-1"):
        return "front-1"
    if process in ("gateway-2", "relay-2"):
        return "front-2"
    return process


def plot_cpu(bars: Sequence[tuple[str, dict[str, float | None]]], title: str,
             path: Path) -> None:
    """Stacked bars: one per (label, µs per delivery by process)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = [s for s in _COLORS if any(_slot(p) == s for _, d in bars for p in d)]
    names: dict[str, set[str]] = {s: set() for s in slots}
    for _, d in bars:
        for p in d:
            names[_slot(p)].add(p)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 * len(bars) + 3.5), 4.8))
    bottoms = [0.0] * len(bars)
    for slot in slots:
        heights = [sum((v or 0.0) for p, v in d.items() if _slot(p) == slot) for _, d in bars]
        ax.bar(range(len(bars)), heights, bottom=bottoms, color=_COLORS[slot],
               label=" / ".join(sorted(names[slot])), edgecolor="white", linewidth=0.5)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for i, total in enumerate(bottoms):
        ax.text(i, total, f"{total:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(bottoms, default=1.0) * 1.1 or 1.0)
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
    ax.set_ylabel("server CPU µs per delivery (median)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(runs: Sequence[Run], title: str, path: Path) -> None:
    """p50 and p99 against delivered messages per second: every run as a dot,
    the medians per rate joined by lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"stack": "#d62728", "baseline": "#1f77b4"}
    summaries = by_arm_and_rate(runs)
    for arm in ARMS:
        arm_runs = [r for r in runs if r["target"] == arm]
        if not arm_runs:
            continue
        for q, style, marker in (("p50", "--", "o"), ("p99", "-", "s")):
            ax.scatter([r["deliveries_per_s"] for r in arm_runs],
                       [r["latency_ms"][q] for r in arm_runs],
                       color=colors[arm], marker=marker, alpha=0.3, s=14)
            rates = sorted(summaries[arm])
            ax.plot([summaries[arm][x]["deliveries_per_s"] for x in rates],
                    [summaries[arm][x][q] for x in rates], style, marker=marker,
                    color=colors[arm], label=f"{arm} {q}")
    ax.axhline(CLEAN_P99_MS, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yscale("log")
    ax.set_xlim(left=0)
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    ax.set_xlabel("deliveries per second (achieved)")
    ax.set_ylabel("latency, send → receipt (ms)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_percentiles(runs: Sequence[Run], title: str, path: Path) -> None:
    """p50/p90/p99 of each arm at one load: the medians as bars, every run as a dot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"stack": "#d62728", "baseline": "#1f77b4"}
    qs = ("p50", "p90", "p99")
    width = 0.38
    for k, arm in enumerate(ARMS):
        arm_runs = [r for r in runs if r["target"] == arm]
        if not arm_runs:
            continue
        s = summarize(arm_runs)
        xs = [i + (k - 0.5) * width for i in range(len(qs))]
        ax.bar(xs, [s[q] for q in qs], width, color=colors[arm], alpha=0.8,
               label=f"{arm} (median of {len(arm_runs)})")
        for x, q in zip(xs, qs, strict=True):
            ax.scatter([x] * len(arm_runs), [r["latency_ms"][q] for r in arm_runs],
                       color="black", s=8, zorder=3)
            ax.text(x, s[q], f"{s[q]:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(qs)), qs)
    ax.set_yscale("log")  # one stalled run must not hide the rest
    ax.set_ylabel("latency, send → receipt (ms), log scale")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- running ---------------------------------------------------------------------------


def _one_line(r: Run) -> str:
    lat = r["latency_ms"]
    return (f"{r['target']:>8} {r['rate']:>6,.0f} sends/s: {r['deliveries_per_s']:>7,} deliv/s "
            f"(offered {r['offered_deliveries_per_s']:,}), p50 {lat['p50']} p99 {lat['p99']} ms, "
            f"{r['cpu_us_per_delivery']} µs/deliv, lost {r['lost']} dup {r['duplicated']}, "
            f"client CPU {r['client_cpu_s']} s, others {r.get('other_cpu_s', '?')} s")


def run_arms(loads: Sequence[Any], pairs: int, order: Sequence[str],
             done: list[Run], skip: set[tuple[str, float]] | None = None) -> None:
    """``pairs`` rounds of every arm at each load in turn, results appended to ``done``."""
    from fanout import run_target

    total = len(loads) * pairs * len(order)
    n = 0
    for load in loads:
        for pair in range(pairs):
            for arm in order:
                n += 1
                if skip and (arm, load.rate) in skip:
                    continue
                t = time.monotonic()
                result = run_target(arm, load)
                result["pair"] = pair
                result["run_s"] = round(time.monotonic() - t, 1)
                done.append(result)
                print(f"[{len(done)}, {n}/{total} at this rate] {_one_line(result)} "
                      f"({result['run_s']} s)",
                      file=sys.stderr, flush=True)


def sweep(args: argparse.Namespace, base_load: Any, runs: list[Run]) -> None:
    """Rising rates; an arm saturated at two rates in a row stops climbing."""
    from dataclasses import replace

    saturated_in_a_row = {arm: 0 for arm in ARMS}
    for rate in args.rates:
        skip = {(arm, rate) for arm in ARMS if saturated_in_a_row[arm] >= 2}
        if len(skip) == len(ARMS):
            break
        load = replace(base_load, rate=rate)
        run_arms([load], args.pairs, _order(args), runs, skip)
        summaries = by_arm_and_rate(runs)
        for arm in ARMS:
            s = summaries.get(arm, {}).get(rate)
            if s is not None:
                saturated_in_a_row[arm] = saturated_in_a_row[arm] + 1 if saturated(s) else 0


def _order(args: argparse.Namespace) -> list[str]:
    return ["baseline", "stack"] if args.baseline_first else ["stack", "baseline"]


def report(args: argparse.Namespace, runs: list[Run]) -> str:
    shape = (f"{args.rooms} room{'s' if args.rooms != 1 else ''} × "
             f"{args.members} members")
    plots = args.plots
    tag = f"{args.rooms}x{args.members}"
    out = []
    if args.sweep:
        summaries = by_arm_and_rate(runs)
        out.append(f"Sweep, {shape}, {args.duration:g} s per run, {args.pairs} run(s) per "
                   "arm and rate\n")
        out.append(sweep_table(summaries))
        if plots is not None:
            bars = [(f"{arm}\n{rate:,.0f}/s", s["cpu_us_by_process"])
                    for rate in sorted({r["rate"] for r in runs})
                    for arm in ARMS if (s := summaries.get(arm, {}).get(rate)) is not None]
            cpu_png = plots / f"sweep-{tag}-cpu.png"
            lat_png = plots / f"sweep-{tag}-latency.png"
            plot_cpu(bars, f"CPU per delivery by process, {shape} (sends/s under each bar)",
                     cpu_png)
            plot_latency(runs, f"Latency against rate, {shape}", lat_png)
            out.append(f"\nplots: {cpu_png} {lat_png}")
    else:
        arms = by_arm(runs)
        stack, base = summarize(arms["stack"]), summarize(arms["baseline"])
        out.append(f"{shape} at {args.rate:,.0f} sends/s "
                   f"({args.rate * args.members:,.0f} deliveries/s offered), "
                   f"{args.duration:g} s per run, {args.pairs} interleaved pair(s)\n")
        out.append(compare_table(stack, base))
        if plots is not None:
            rate_tag = f"{args.rate:g}"
            cpu_png = plots / f"compare-{tag}-{rate_tag}-cpu.png"
            lat_png = plots / f"compare-{tag}-{rate_tag}-latency.png"
            plot_cpu([("stack", stack["cpu_us_by_process"]),
                      ("baseline", base["cpu_us_by_process"])],
                     f"CPU per delivery by process, {shape}, {args.rate:,.0f} sends/s",
                     cpu_png)
            plot_percentiles(runs, f"Latency percentiles, {shape}, {args.rate:,.0f} sends/s",
                             lat_png)
            out.append(f"\nplots: {cpu_png} {lat_png}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=None,
                    help="runs of each arm (per rate with --sweep); default 3, 1 with --sweep")
    ap.add_argument("--rooms", type=int, default=50)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--rate", type=float, default=3000, help="total sends per second")
    ap.add_argument("--duration", type=float, default=20, help="seconds of sending per run")
    ap.add_argument("--sweep", action="store_true", help="rising rates; the highest clean one")
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                    default=list(DEFAULT_RATES), help="with --sweep: sends/s, comma-separated")
    ap.add_argument("--baseline-first", action="store_true",
                    help="B A B A … instead of A B A B …")
    ap.add_argument("--json", type=Path, help="write every run's raw result here")
    ap.add_argument("--plots", type=Path, default=PLOTS,
                    help=f"where the PNGs go (default {PLOTS.relative_to(PLOTS.parents[2])})")
    ap.add_argument("--no-plots", dest="plots", action="store_const", const=None)
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="run nothing: print the table and draw the plots of a --json file")
    args = ap.parse_args()
    if args.report:
        saved = json.loads(args.report.read_text())
        kept = {k: v for k, v in saved["args"].items()
                if k in ("rooms", "members", "rate", "duration", "sweep", "pairs")}
        print(report(argparse.Namespace(**{**vars(args), **kept}), saved["runs"]))
        return
    if args.pairs is None:
        args.pairs = 1 if args.sweep else 3

    from fanout import Load

    load = Load(rooms=args.rooms, members=args.members, rate=args.rate,
                duration=args.duration)
    runs: list[Run] = []
    try:
        if args.sweep:
            sweep(args, load, runs)
        else:
            run_arms([load], args.pairs, _order(args), runs)
    finally:
        if args.json:
            args.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                      for k, v in vars(args).items()},
                                             "runs": runs}, indent=1))
    print(report(args, runs))


if __name__ == "__main__":
    main()

"""Turn a run's points into report.md (tables, target checks) and PNG plots beside results.json.

Every number in the report is in the simulated fleet's time (see bench/harness.py). A cell reads
"mean ±half-range" over the repeats; two contenders are "within spread" when their ranges overlap
or their means differ by less than RESOLUTION.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

METRICS = {
    # key: (title, unit scale, unit, higher is better)
    "ttft_p50_s": ("TTFT p50", 1000.0, "ms", False),
    "ttft_p99_s": ("TTFT p99", 1000.0, "ms", False),
    "ttft_mean_s": ("TTFT mean", 1000.0, "ms", False),
    "throughput_rps": ("Throughput", 1.0, "req/s", True),
    "output_tokens_per_s": ("Output tokens/s", 1.0, "tok/s", True),
    "hit_rate": ("Prefix cache hit rate (backend counters)", 100.0, "%", True),
}
COMPARED = ("ttft_p50_s", "ttft_p99_s", "throughput_rps")
COST = "kvroute:cost"


def _value(point: dict[str, Any], metric: str) -> float | None:
    if point.get("error"):
        return None
    if metric == "hit_rate":
        return point["backend"].get("hit_rate")
    return point["summary"].get(metric)


class Cell:
    def __init__(self, values: Iterable[float | None]) -> None:
        self.values = [v for v in values if v is not None and not math.isnan(v)]

    @property
    def ok(self) -> bool:
        return bool(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def text(self, scale: float, digits: int = 1) -> str:
        if not self.ok:
            return "n/a"
        half = (self.high - self.low) / 2 * scale
        spread = f" ±{half:.{digits}f}" if len(self.values) > 1 else ""
        return f"{self.mean * scale:.{digits}f}{spread}"


def aggregate(points: list[dict[str, Any]]) -> dict[tuple[str, str], dict[float, dict[str, dict[str, Cell]]]]:
    """(workload, mode) -> x -> contender -> metric -> Cell over repeats."""
    grouped: dict[tuple[str, str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        grouped[(p["workload"], p["mode"], p["x"], p["contender"])].append(p)
    out: dict[tuple[str, str], dict[float, dict[str, dict[str, Cell]]]] = defaultdict(lambda: defaultdict(dict))
    for (workload, mode, x, contender), group in grouped.items():
        out[(workload, mode)][x][contender] = {m: Cell(_value(p, m) for p in group) for m in METRICS}
        out[(workload, mode)][x][contender]["errors"] = Cell(
            float(p["summary"].get("errors", 0)) if not p.get("error") else float("nan") for p in group)
    return out


def _contenders(table: dict[float, dict[str, dict[str, Cell]]], order: list[str]) -> list[str]:
    present = {c for row in table.values() for c in row}
    return [c for c in order if c in present] + sorted(present - set(order))


def _axis(mode: str, params: dict[str, Any] | None = None) -> str:
    return "concurrency" if mode == "closed" else "trace speedup"


# Below this relative difference two means count as equal even where a single repeat gives no range:
# an open loop below saturation delivers its offered rate to within a fraction of a percent.
RESOLUTION = 0.02


def compare(a: Cell, b: Cell, higher_better: bool) -> str:
    """'better', 'worse' or 'same' (ranges overlap, or means within RESOLUTION) for a against b."""
    if not (a.ok and b.ok):
        return "n/a"
    if a.low <= b.high and b.low <= a.high:
        return "same"
    if abs(a.mean - b.mean) <= RESOLUTION * max(abs(a.mean), abs(b.mean)):
        return "same"
    better = a.mean > b.mean if higher_better else a.mean < b.mean
    return "better" if better else "worse"


def _blog_targets(name: str, blog: dict[float, dict[str, dict[str, Cell]]]) -> list[str]:
    lines = []
    one = blog.get(1.0, {})
    if COST in one and "kvroute:round_robin" in one:
        c, r = one[COST]["ttft_p50_s"], one["kvroute:round_robin"]["ttft_p50_s"]
        if c.ok and r.ok:
            cut = 1 - c.mean / r.mean
            lines.append(f"- {name}, concurrency 1: cost cuts TTFT p50 by **{cut * 100:.0f}%** against round_robin "
                         f"({c.mean * 1000:.1f} ms vs {r.mean * 1000:.1f} ms); target ≥ 40%: "
                         f"**{'met' if cut >= 0.40 else 'not met'}**.")
    c32 = blog.get(32.0, {})
    if COST in c32 and "kvroute:round_robin" in c32:
        c, r = c32[COST]["throughput_rps"], c32["kvroute:round_robin"]["throughput_rps"]
        if c.ok and r.ok:
            verdict = compare(c, r, True)
            lines.append(f"- {name}, concurrency 32: cost {c.mean:.2f} req/s vs round_robin {r.mean:.2f} req/s "
                         f"({verdict}); target ≥ round_robin: **{'met' if verdict != 'worse' else 'not met'}**.")
    return lines


def targets(agg: dict[tuple[str, str], dict[float, dict[str, dict[str, Cell]]]]) -> list[str]:
    lines = []
    for name in ("blog", "blog-warm"):  # the blog experiment on cold caches, then warm
        lines.extend(_blog_targets(name, agg.get((name, "closed"), {})))
    misses = []
    checked = 0
    for (workload, mode), table in sorted(agg.items()):
        for x, row in sorted(table.items()):
            if COST not in row:
                continue
            checked += sum(other not in (COST, "direct") for other in row) * len(COMPARED)
            for other, metric in _losses(row, list(row)):
                title, scale, unit, _ = METRICS[metric]
                misses.append(f"  - {workload}, {_axis(mode)} {x:g}, {title}: cost "
                              f"{row[COST][metric].text(scale)} {unit} vs {other} "
                              f"{row[other][metric].text(scale)} {unit}")
    lines.extend(_workers_target(agg))
    lines.append(f"- cost at least as good as every other router within the spread (ranges overlap, or means "
                 f"within {RESOLUTION:.0%}): {checked - len(misses)} of "
                 f"{checked} comparisons; worse in {len(misses)}" + (":" if misses else "."))
    lines.extend(misses)
    return lines


def _losses(row: dict[str, dict[str, Cell]], others: list[str]) -> list[tuple[str, str]]:
    """Every (contender, metric), in the order of `others`, where cost is worse beyond the spread."""
    return [(other, metric) for other in others if other not in (COST, "direct") for metric in COMPARED
            if compare(row[COST][metric], row[other][metric], METRICS[metric][3]) == "worse"]


def _worse_than(row: dict[str, dict[str, Cell]]) -> list[str]:
    """Cost's losses in a row, spelled for a scenario's report line."""
    out = []
    for other, metric in _losses(row, sorted(row)):
        title, scale, unit, _ = METRICS[metric]
        out.append(f"{title} {row[COST][metric].text(scale)} vs {other} {row[other][metric].text(scale)} {unit}")
    return out


def _slow_backend_share(points: list[dict[str, Any]]) -> tuple[bool, str]:
    """hetero: backend 0 runs at half speed, so it must get less than an equal share of the requests."""
    shares = [p["backend"]["requests"][0] / sum(p["backend"]["requests"]) for p in points if sum(p["backend"]["requests"])]
    if not shares:
        return False, "no backend counters"
    share, fair = sum(shares) / len(shares), 1 / len(points[0]["backend"]["requests"])
    return share < fair, f"the slow backend got {share:.0%} of the requests (an equal share is {fair:.0%})"


def _prefix_copies(points: list[dict[str, Any]]) -> tuple[bool, str]:
    """burst: the new prefix must be prefilled together, not once on every backend."""
    copies = []
    for p in points:
        computed = p["backend"].get("computed_tokens")
        if computed is None:
            return False, "no per-backend computed tokens in this run (older harness)"
        # A backend prefilled the prefix when it computed at least half of its length.
        copies.append(sum(c >= p["params"]["prefix_tokens"] / 2 for c in computed))
    if not copies:
        return False, "no points"
    instances = len(points[0]["backend"]["computed_tokens"])
    return max(copies) < instances, f"the prefix was prefilled on {max(copies)} of {instances} backends"


# The scenarios of issue 14, each with its pass rule: cost level with or better than every contender on
# TTFT p50, p99 and throughput, plus the scenario's own check on how the work was placed.
SCENARIO_CHECKS = {"hotspot": None, "stale": None, "hetero": _slow_backend_share, "burst": _prefix_copies}


def scenario_rules(agg: dict[tuple[str, str], dict[float, dict[str, dict[str, Cell]]]],
                   points: list[dict[str, Any]]) -> list[str]:
    lines = []
    for (workload, mode), table in sorted(agg.items()):
        if workload not in SCENARIO_CHECKS:
            continue
        for x, row in sorted(table.items()):
            if COST not in row:
                continue
            problems = _worse_than(row)
            check, said = SCENARIO_CHECKS[workload], ""
            if check is not None:
                mine = [p for p in points if p["workload"] == workload and p["mode"] == mode and p["x"] == x
                        and p["contender"] == COST and not p.get("error")]
                ok, said = check(mine)
                if not ok:
                    problems.append(said)
            rivals = sum(1 for n in row if n not in (COST, "direct"))
            verdict = "**pass**" if not problems else "**fail**: " + "; ".join(problems)
            note = f" ({said})" if said and not problems else ""
            lines.append(f"- scenario {workload}, {_axis(mode)} {x:g}, against {rivals} contenders: {verdict}{note}")
    return lines


WORKERS_TOLERANCE = 0.02  # issue 13: `serve --workers 4` keeps the hit rate of one worker within 2 points


def _workers_target(agg: dict[tuple[str, str], dict[float, dict[str, dict[str, Cell]]]]) -> list[str]:
    """Every kvroute contender `X:wN` beside its one-worker `X`: the hit rate it gives up."""
    lines = []
    for (workload, mode), table in sorted(agg.items()):
        for x, row in sorted(table.items()):
            for name, cells in sorted(row.items()):
                base, _, workers = name.rpartition(":w")
                if not (name.startswith("kvroute:") and workers.isdigit() and base in row):
                    continue
                one, many = row[base]["hit_rate"], cells["hit_rate"]
                if one.ok and many.ok:
                    lost = one.mean - many.mean
                    lines.append(f"- {workload}, {_axis(mode)} {x:g}: `{name}` hit rate {many.mean * 100:.1f}% vs "
                                 f"`{base}` {one.mean * 100:.1f}% ({-lost * 100:+.1f} points); within "
                                 f"{WORKERS_TOLERANCE * 100:.0f}: **{'met' if lost <= WORKERS_TOLERANCE else 'not met'}**.")
    return lines


def markdown(data: dict[str, Any], plots: list[str], image_prefix: str = "", level: int = 1) -> str:
    """The report; `level` is the depth of its title (docs nest it), `image_prefix` leads plot paths."""
    h = "#" * level
    meta = data["meta"]
    agg = aggregate(data["points"])
    order = [c["name"] for c in meta["contenders"]]
    fleet = meta["fleet"]
    out = [f"{h} kvroute benchmark: suite `{meta['suite']}`", ""]
    out += [f"- command: `{meta['command']}`",
            f"- started {meta['started']}, took {meta.get('duration_s', 0) / 60:.1f} min",
            f"- machine: {meta['machine']['nproc']} cores, {meta['machine']['cpu']}, Python {meta['machine']['python']}",
            (f"- fleet: {fleet['instances']} × `kvroute sim` profile `{fleet['profile']}` ({fleet['kv_blocks']} KV "
             f"blocks each), simulated clock ×{fleet['time_scale']:g} unless a section says otherwise; every number "
             f"below is in the fleet's time (wall seconds × the scale)" if fleet.get("kind", "sim") == "sim" else
             f"- fleet: {fleet['instances']} × {fleet['profile']} (real time)"),
            "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
            "- contenders, each started by the bench with its policy and these flags (defaults otherwise): "
            + "; ".join(f"`{c['name']}` {' '.join(c.get('flags') or []) or '(none)'}" for c in meta["contenders"]),
            f"- repeats per point: {meta['repeats']} (cells: mean ±half-range)", ""]
    if meta["suite"] == "quick":
        out += ["This suite checks that the instrument works; its points are too small for the verdicts "
                "below to mean anything. `--suite standard` makes the numbers to quote.", ""]
    out += [f"{h}# Targets", ""] + targets(agg) + scenario_rules(agg, data["points"]) + [""]
    for (workload, mode), table in sorted(agg.items()):
        sweep: dict[str, Any] = next((s for s in meta["sweeps"] if s["params"].get("name", s["workload"]) == workload
                                      and s["mode"] == mode), {})
        names = _contenders(table, order)
        out += [f"{h}# {workload} ({'closed loop' if mode == 'closed' else 'open loop'})", ""]
        scale = sweep.get("time_scale") or fleet["time_scale"]
        params: dict[str, Any] = next((p["params"] for p in data["points"] if p["workload"] == workload and p["mode"] == mode), {})
        shown = {k: v for k, v in params.items() if k not in ("path", "speedup", "time_scale")}
        own_fleet = "".join([f"; profile `{sweep['profile']}`" if sweep.get("profile") else "",
                             f"; engine {sweep['engine']}" if sweep.get("engine") else ""])
        out += [f"simulated clock ×{scale:g}{own_fleet}; workload: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()), ""]
        if mode == "open":
            offered = sorted({(p["x"], p["params"]["requests"] / p["params"]["span_s"]) for p in data["points"]
                              if p["workload"] == workload and p["mode"] == mode and p["params"].get("span_s")})
            out += ["offered load (fleet requests/s): " + ", ".join(f"speedup {x:g}: {r:.0f}" for x, r in offered), ""]
        for metric in ("ttft_p50_s", "ttft_p99_s", "ttft_mean_s", "throughput_rps", "hit_rate"):
            title, scale, unit, _ = METRICS[metric]
            out += [f"**{title}** ({unit})", "", "| " + _axis(mode) + " | " + " | ".join(names) + " |",
                    "|---:|" + "---:|" * len(names)]
            for x, row in sorted(table.items()):
                cells = [row[n][metric].text(scale, 2 if unit == "req/s" else 1) if n in row else "" for n in names]
                out.append(f"| {x:g} | " + " | ".join(cells) + " |")
            out.append("")
        mine = [p for p in data["points"] if p["workload"] == workload and p["mode"] == mode and not p.get("error")]
        out += _conditions(mine) + _decisions(mine, names) + _view(mine, names) + _calibration(mine, names)
        errors = [(x, n, row[n]["errors"].mean) for x, row in sorted(table.items()) for n in names
                  if n in row and row[n]["errors"].ok and row[n]["errors"].mean > 0]
        failed = [(p["x"], p["contender"], p["error"]) for p in data["points"]
                  if p["workload"] == workload and p["mode"] == mode and p.get("error")]
        if errors or failed:
            out += ["Errors: " + "; ".join([f"{n} at {x:g}: {e:g} failed requests" for x, n, e in errors] +
                                            [f"{n} at {x:g}: {e}" for x, n, e in failed]), ""]
    if plots:
        out += [f"{h}# Plots", ""] + [f"![{Path(p).stem}]({image_prefix}{p})" for p in plots] + [""]
    return "\n".join(out)


def _conditions(points: list[dict[str, Any]]) -> list[str]:
    """How busy the machine was: a point's numbers are only as good as the CPU the fleet got."""
    loads = [p["cpu"].get("loadavg_1m") for p in points if p["cpu"].get("loadavg_1m") is not None]
    busy = [p["cpu"].get("cores_busy") for p in points if p["cpu"].get("cores_busy") is not None]
    if not loads or not busy:
        return []
    return [f"Conditions: 1-minute load average {min(loads):.1f}–{max(loads):.1f} on "
            f"{os.cpu_count()} cores (other work on the machine included); the run's own processes (fleet, "
            f"gateway, load generator) kept {min(busy):.2f}–{max(busy):.2f} cores busy.", ""]


def _decisions(points: list[dict[str, Any]], names: list[str]) -> list[str]:
    """kvroute's own account of its choices, summed over the section's points."""
    rows = []
    for name in names:
        total: dict[str, float] = defaultdict(float)
        for p in points:
            if p["contender"] == name:
                for branch, count in (p.get("decisions") or {}).items():
                    if isinstance(count, (int, float)):
                        total[branch] += count
        n = sum(total.values())
        if n:
            shares = ", ".join(f"{b} {c / n * 100:.0f}%" for b, c in sorted(total.items(), key=lambda kv: -kv[1]))
            rows.append(f"- {name}: {shares}")
    return (["kvroute decisions by policy branch (all points of this section):", ""] + rows + [""]) if rows else []


def _view(points: list[dict[str, Any]], names: list[str]) -> list[str]:
    """How right kvroute's cache view was: prompt tokens it predicted cached at routing against those
    the backends reported cached (usage.prompt_tokens_details), summed over the section's points."""
    rows = []
    for name in names:
        views = [p.get("view") or {} for p in points if p["contender"] == name]
        predicted = sum(v.get("predicted_cached_tokens", 0) for v in views)
        reported = sum(v.get("reported_cached_tokens", 0) for v in views)
        if reported or predicted:
            rows.append(f"| {name} | {predicted:,.0f} | {reported:,.0f} | "
                        f"{predicted / reported * 100 if reported else float('nan'):.1f}% |")
    if not rows:
        return []
    return (["kvroute's cache view (all points of this section): cached prompt tokens predicted at routing "
             "against those the backends reported", "", "| contender | predicted | reported | predicted/reported |",
             "|---|---:|---:|---:|"] + rows + [""])


def _calibration(points: list[dict[str, Any]], names: list[str]) -> list[str]:
    """How right kvroute's TTFT model was: measured over predicted TTFT per request (1 = exact, above 1
    = the model was optimistic), its median (p10–p90) per point and per decision branch; over
    repeats, the medians' mean and the widest p10–p90."""
    rows = []
    for name in names:
        by_x: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for p in points:
            if p["contender"] == name and p.get("calibration"):
                by_x[p["x"]].append(p["calibration"])
        for x, cals in sorted(by_x.items()):
            branches: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for cal in cals:
                for branch, stats in cal["by_branch"].items():
                    branches[branch].append(stats)
            shown = sorted(branches.items(), key=lambda kv: -sum(s["requests"] for s in kv[1]))
            rows.append(f"| {name} | {x:g} | {sum(c['requests'] for c in cals)} | {_ratio_text(cals)} | "
                        + "; ".join(f"{b} ({sum(s['requests'] for s in st)}) {_ratio_text(st)}" for b, st in shown)
                        + " |")
    if not rows:
        return []
    return (["kvroute's TTFT model (all points of this section): measured ÷ predicted TTFT per request, median "
             "(p10–p90), wall clock", "", "| contender | point | requests | measured/predicted | by branch |",
             "|---|---:|---:|---:|---|"] + rows + [""])


def _ratio_text(stats: list[dict[str, Any]]) -> str:
    return (f"{sum(s['ratio_p50'] for s in stats) / len(stats):.2f} "
            f"({min(s['ratio_p10'] for s in stats):.2f}–{max(s['ratio_p90'] for s in stats):.2f})")


def plot(data: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(data["points"])
    order = [c["name"] for c in data["meta"]["contenders"]]
    files = []
    for (workload, mode), table in sorted(agg.items()):
        names = _contenders(table, order)
        xs = sorted(table)
        # An open loop is plotted against the load it offered (fleet requests/s), not the trace speedup.
        offered = {p["x"]: p["params"]["requests"] / p["params"]["span_s"] for p in data["points"]
                   if p["workload"] == workload and p["mode"] == mode and p["params"].get("span_s")}
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
        for ax, metric in zip(axes, ("ttft_p50_s", "ttft_p99_s", "throughput_rps")):
            title, scale, unit, _ = METRICS[metric]
            for name in names:
                pts = [(x, table[x][name][metric]) for x in xs if name in table[x] and table[x][name][metric].ok]
                if not pts:
                    continue
                px = [offered.get(x, x) if mode == "open" else x for x, _ in pts]
                mean = [c.mean * scale for _, c in pts]
                err = [[(c.mean - c.low) * scale for _, c in pts], [(c.high - c.mean) * scale for _, c in pts]]
                style = "-" if name.startswith("kvroute") else "--" if name.startswith("sglang") else ":"
                ax.errorbar(px, mean, yerr=err, label=name, linestyle=style, marker="o", capsize=3,
                            linewidth=2.2 if name == COST else 1.2)
            if mode == "closed" and len(xs) > 2:
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs)
                ax.set_xticklabels([f"{x:g}" for x in xs])
            if mode == "open" and offered:
                ax.set_xlabel("offered load, fleet requests/s")
                if metric != "throughput_rps":
                    ax.set_yscale("log")
            else:
                ax.set_xlabel(_axis(mode))
                if metric == "ttft_p99_s":
                    # One stalled request (this machine is shared) must not flatten every other line.
                    ax.set_yscale("log")
            if metric == "throughput_rps":
                ax.set_ylim(bottom=0)
            ax.set_ylabel(unit)
            ax.set_title(f"{workload}: {title}")
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        name = f"{workload}_{mode}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        files.append(name)
    # Cache hit rate per contender, averaged over each workload's points.
    workloads = sorted(agg)
    names = _contenders({0.0: {c: {} for t in agg.values() for row in t.values() for c in row}}, order)
    names = [n for n in names if n != "direct"]
    if workloads and names:
        fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(workloads) * len(names) / 4), 4.6))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            heights = []
            for key in workloads:
                rates = [v for row in agg[key].values() if name in row for v in row[name]["hit_rate"].values]
                heights.append(100 * sum(rates) / len(rates) if rates else 0.0)
            ax.bar([w + i * width for w in range(len(workloads))], heights, width, label=name)
        ax.set_xticks([w + 0.4 - width / 2 for w in range(len(workloads))])
        ax.set_xticklabels([f"{w} ({m})" for w, m in workloads])
        ax.set_ylabel("prefix cache hit rate, %")
        ax.set_title("Prefix cache hit rate per contender (backend counters, mean over points)")
        ax.legend(fontsize=8, ncol=2)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "cache_hit_rate.png", dpi=90)
        plt.close(fig)
        files.append("cache_hit_rate.png")
    return files


def write(data: dict[str, Any], out: Path) -> None:
    files = plot(data, out)
    (out / "report.md").write_text(markdown(data, files))


BEGIN, END = "<!-- bench:standard:begin -->", "<!-- bench:standard:end -->"


HEADLINE_BEGIN, HEADLINE_END = "<!-- bench:headline:begin -->", "<!-- bench:headline:end -->"


def headline(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One row per workload and load over several runs: the best contender on each compared metric
    and cost's ratio to it (cost / best for TTFT, best / cost for throughput: above 1 is behind),
    marked level when the two are within the spread."""
    out = ["| workload | load | run | TTFT p50: best (ms) | cost × | TTFT p99: best (ms) | cost × | "
           "throughput: best (req/s) | cost × |", "|---|---:|---|---|---:|---|---:|---|---:|"]
    for run_name, data in runs:
        for (workload, mode), table in sorted(aggregate(data["points"]).items()):
            for x, row in sorted(table.items()):
                if COST not in row:
                    continue
                cells = []
                for metric in COMPARED:
                    _, scale, unit, higher = METRICS[metric]
                    rivals = {n: c[metric] for n, c in row.items() if n != "direct" and c[metric].ok}
                    if COST not in rivals:
                        cells += ["n/a", ""]
                        continue
                    best = (max if higher else min)(rivals, key=lambda n: rivals[n].mean)
                    mine, top = rivals[COST].mean, rivals[best].mean
                    ratio = top / mine if higher else mine / top
                    verdict = compare(rivals[COST], rivals[best], higher)
                    mark = f"**{ratio:.2f}**" if verdict == "worse" else f"{ratio:.2f}"
                    cells += [f"{top * scale:.{2 if unit == 'req/s' else 0}f} {best}", mark]
                axis = "c" if mode == "closed" else "×"
                out.append(f"| {workload} | {axis}{x:g} | {run_name} | " + " | ".join(cells) + " |")
    return out


def update_headline(runs: list[Path], doc: Path) -> None:
    """The table that opens docs/benchmarks.md, from the runs named (each by its directory's name)."""
    import json

    loaded = [(run.name, json.loads((run / "results.json").read_text())) for run in runs]
    text = doc.read_text()
    start, end = text.index(HEADLINE_BEGIN) + len(HEADLINE_BEGIN), text.index(HEADLINE_END)
    doc.write_text(text[:start] + "\n" + "\n".join(headline(loaded)) + "\n" + text[end:])


def update_doc(run: Path, doc: Path) -> None:
    """Put a run's report into `doc` between the BEGIN/END markers, plots linked from the doc's folder."""
    import json

    data = json.loads((run / "results.json").read_text())
    plots = sorted(p.name for p in run.glob("*.png"))
    prefix = os.path.relpath(run.resolve(), doc.resolve().parent) + "/"
    section = markdown(data, plots, image_prefix=prefix, level=3)
    text = doc.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:start] + "\n" + section + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.report", description="rewrite a run's report")
    parser.add_argument("run", type=Path, nargs="+", help="results directories (each holds results.json)")
    parser.add_argument("--update-doc", type=Path, help="also put the (one) run into this document between its markers")
    parser.add_argument("--headline", type=Path, metavar="DOC",
                        help="write the runs' best-contender table into DOC between its headline markers")
    args = parser.parse_args(argv)
    if args.update_doc and len(args.run) != 1:
        parser.error("--update-doc takes one run")
    for run in args.run:
        write(json.loads((run / "results.json").read_text()), run)
    if args.update_doc:
        update_doc(args.run[0], args.update_doc)
    if args.headline:
        update_headline(args.run, args.headline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Summaries, targets, the Markdown table, and the chart for one benchmark result."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

METRICS = (
    "wall_s",
    "q2r_p50_s",
    "q2r_p95_s",
    "duration_p50_s",
    "slot_gap_p50_s",
    "end_to_read_p50_s",
    "read_to_queued_p50_s",
    "peak_concurrency",
    "peak_pss_mb",
    "tasks_per_s",
    "sched_cpu_s_per_task",
    "api_cpu_s_per_task",
    "loop_cpu_s_per_task",
    "idle_pss_mb",
)


def pyplot() -> Any:
    """matplotlib's pyplot (headless), or None where it is not installed (``make bench`` installs it)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and min–max of each metric per (config, DAG), in the order configs first appear."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["config"], r["dag"])].append(r)
    out = []
    for (config, dag), rs in groups.items():
        row: dict[str, Any] = {
            "config": config,
            "executor": rs[0]["executor"],
            "parallelism": rs[0]["parallelism"],
            "dag": dag,
            "runs": len(rs),
            "all_succeeded": all(r["succeeded"] == r["tasks"] for r in rs),
        }
        for m in METRICS:
            values = [r[m] for r in rs if m in r and r[m] is not None and not math.isnan(r[m])]
            row[m] = {
                "median": statistics.median(values) if values else math.nan,
                "min": min(values, default=math.nan),
                "max": max(values, default=math.nan),
            }
        out.append(row)
    return out


def _find(summary: list[dict[str, Any]], executor: str, parallelism: int, dag: str) -> dict[str, Any] | None:
    for row in summary:
        if (row["executor"], row["parallelism"], row["dag"]) == (executor, parallelism, dag):
            return row
    return None


def ratio(summary: list[dict[str, Any]], parallelism: int, dag: str, metric: str, ours_as: str = "forklift") -> float:
    ours, theirs = _find(summary, ours_as, parallelism, dag), _find(summary, "airflow", parallelism, dag)
    if not ours or not theirs or not theirs[metric]["median"]:
        return math.nan
    return ours[metric]["median"] / theirs[metric]["median"]


def targets(summary: list[dict[str, Any]], engine: dict[str, Any] | None, dags: list[str]) -> list[dict[str, Any]]:
    """Each target with its measured value and PASS/FAIL (NOT RUN when its part was skipped)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, limit: float, unit: str = "") -> None:
        status = "NOT RUN" if math.isnan(value) else ("PASS" if value <= limit else "FAIL")
        out.append({"target": name, "value": value, "limit": limit, "unit": unit, "status": status})

    for dag in dags:
        add(f"p=4 {dag}: wall ÷ Airflow's", ratio(summary, 4, dag, "wall_s"), 0.5, "×")
        row = _find(summary, "forklift", 4, dag)
        add(f"p=4 {dag}: queued→running p50", row["q2r_p50_s"]["median"] if row else math.nan, 1.0, "s")
        add(f"p=32 {dag}: wall ÷ Airflow's", ratio(summary, 32, dag, "wall_s"), 0.8, "×")
        add(f"p=32 {dag}: scheduler-tree PSS ÷ Airflow's", ratio(summary, 32, dag, "peak_pss_mb"), 1.0, "×")
        for p, limit in ((4, 0.5), (32, 0.8)):
            add(
                f"defaults p={p} {dag}: wall ÷ Airflow's",
                ratio(summary, p, dag, "wall_s", "forklift-defaults"),
                limit,
                "×",
            )
            row = _find(summary, "forklift-defaults", p, dag)
            add(f"defaults p={p} {dag}: most running at once", row["peak_concurrency"]["max"] if row else math.nan, p)
    nan = math.nan
    e = engine or {}
    add("engine: fork dispatch p50", e.get("fork_dispatch_s", {}).get("p50", nan) * 1000, 10.0, "ms")
    add("engine: subprocess dispatch ÷ bare interpreter start", e.get("subprocess_over_bare", nan), 1.1, "×")
    add("engine: sync() drains 1,000 results", e.get("sync_drain_1000_s", {}).get("median", nan) * 1000, 20.0, "ms")
    add("engine: idle worker USS", e.get("idle_worker_uss_mb", {}).get("median", nan), 10.0, "MB")
    return out


def extra_targets(scale: list[dict[str, Any]], footprint: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scale and footprint targets (issue: 1,000 tasks ≤ 0.5× at p=16; idle PSS with idle_timeout ≤ 0.25×)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, limit: float, unit: str = "") -> None:
        status = "NOT RUN" if math.isnan(value) else ("PASS" if value <= limit else "FAIL")
        out.append({"target": name, "value": value, "limit": limit, "unit": unit, "status": status})

    if scale:
        for dag in ("python1000", "mapped1000"):
            add(f"scale p=16 {dag}: wall ÷ Airflow's", ratio(scale, 16, dag, "wall_s"), 0.5, "×")
            add(
                f"scale p=16 {dag}, defaults: wall ÷ Airflow's",
                ratio(scale, 16, dag, "wall_s", "forklift-defaults"),
                0.5,
                "×",
            )
    if footprint:
        add(
            "p=32 idle scheduler-tree PSS with idle_timeout ÷ Airflow's",
            ratio(footprint, 32, "python", "idle_pss_mb", "forklift-idle"),
            0.25,
            "×",
        )
    return out


#: A metric that results written before it existed do not have.
_UNMEASURED = {"median": math.nan, "min": math.nan, "max": math.nan}


def _cell(stat: dict[str, float], fmt: str) -> str:
    if math.isnan(stat["median"]):
        return "–"
    return f"{stat['median']:{fmt}} ({stat['min']:{fmt}}–{stat['max']:{fmt}})"


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"forklift {meta['forklift']} · Airflow {meta['airflow']} ({meta['database']}) · Python {meta['python']} · "
        f"{meta['cpus']} CPUs · load {meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} after · "
        f"{meta['runs']} runs each (scale rows: {meta.get('scale_runs', '–')}), executors alternating · {meta['date']}",
        "",
    ]
    summary = result["summary"]
    if summary:
        lines += [
            "| executor | DAG | wall s | q→run p50 s | q→run p95 s | duration p50 s | slot gap p50 s | peak concurrent | peak PSS MB | wall ÷ Airflow's |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in summary:
            r = (
                ratio(summary, row["parallelism"], row["dag"], "wall_s", row["executor"])
                if row["executor"] != "airflow"
                else math.nan
            )
            lines.append(
                f"| {row['config']}{'' if row['all_succeeded'] else ' ⚠ not all succeeded'} | {row['dag']} "
                f"| {_cell(row['wall_s'], '.1f')} | {_cell(row['q2r_p50_s'], '.2f')} | {_cell(row['q2r_p95_s'], '.2f')} "
                f"| {_cell(row['duration_p50_s'], '.2f')} | {_cell(row['slot_gap_p50_s'], '.2f')} | {_cell(row['peak_concurrency'], '.0f')} "
                f"| {_cell(row['peak_pss_mb'], '.0f')} | {'–' if math.isnan(r) else f'{r:.2f}×'} |"
            )
        lines.append("")
        waves = [row for row in summary if row["parallelism"] > 0 and "end_to_read_p50_s" in row]
        if waves:
            lines += [
                "Where a freed slot's time goes (medians of per-run p50s, s): a task's end → the scheduler reads it "
                "(its slot is free) → the task that takes the slot is queued (negative: it was already, held "
                "ready) → it runs; and the whole gap from one task's end to the next start in its slot.",
                "",
                "| executor | DAG | end → read | read → next queued | queued → running | slot gap |",
                "|---|---|---|---|---|---|",
            ]
            for row in waves:
                lines.append(
                    f"| {row['config']} | {row['dag']} | {_cell(row['end_to_read_p50_s'], '.2f')} "
                    f"| {_cell(row['read_to_queued_p50_s'], '.2f')} | {_cell(row['q2r_p50_s'], '.2f')} "
                    f"| {_cell(row['slot_gap_p50_s'], '.2f')} |"
                )
            lines.append("")
    costs = [row for row in summary + result.get("scale_summary", []) if "sched_cpu_s_per_task" in row]
    if costs:
        lines += [
            "Cost per task (medians): CPU seconds of the scheduler's whole tree (executor, workers, tasks), of "
            "that the scheduler's own process (its loop), and of the api-server (Airflow 3), per task instance; "
            "tasks per second over the DAG run's wall time.",
            "",
            "| executor | DAG | tasks | wall s | tasks/s | scheduler-tree CPU s/task | of it, the loop | api-server CPU s/task | q→run p50 / p95 s | peak PSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in costs:
            lines.append(
                f"| {row['config']} | {row['dag']} | {_tasks(row)} | {_cell(row['wall_s'], '.1f')} "
                f"| {_cell(row['tasks_per_s'], '.1f')} | {_cell(row['sched_cpu_s_per_task'], '.3f')} "
                f"| {_cell(row.get('loop_cpu_s_per_task', _UNMEASURED), '.3f')} "
                f"| {_cell(row['api_cpu_s_per_task'], '.3f')} | {_cell(row['q2r_p50_s'], '.2f')} / "
                f"{_cell(row['q2r_p95_s'], '.2f')} | {_cell(row['peak_pss_mb'], '.0f')} |"
            )
        lines.append("")
    footprint = result.get("footprint_summary") or []
    if footprint:
        lines += [
            "Scheduler-tree PSS at parallelism 32 (MB): busy is the peak while the 50-task python DAG runs; idle is "
            "after it, with the workers up and no tasks, once forklift-idle's idle_timeout has passed.",
            "",
            "| executor | busy (peak) | idle |",
            "|---|---|---|",
        ]
        for row in footprint:
            lines.append(
                f"| {row['config']} | {_cell(row['peak_pss_mb'], '.0f')} | {_cell(row['idle_pss_mb'], '.0f')} |"
            )
        lines.append("")
    engine = result.get("engine")
    if engine:
        t = engine["throughput_per_s"]
        lines += [
            "| engine | value |",
            "|---|---|",
            f"| fork dispatch p50 / p95 | {engine['fork_dispatch_s']['p50'] * 1000:.1f} / {engine['fork_dispatch_s']['p95'] * 1000:.1f} ms |",
            f"| subprocess dispatch p50 / p95 | {engine['subprocess_dispatch_s']['p50']:.3f} / {engine['subprocess_dispatch_s']['p95']:.3f} s |",
            f"| bare interpreter + `import {engine['task_import']}` p50 | {engine['bare_interpreter_s']['p50']:.3f} s |",
            f"| throughput, LimitedParallelism(4) fork / subprocess | {t['limited_4_fork']:.0f} / {t['limited_4_subprocess']:.0f} items/s |",
            f"| throughput, UnlimitedParallelism fork / subprocess | {t['unlimited_fork']:.0f} / {t['unlimited_subprocess']:.0f} items/s |",
            f"| `sync()` reading 1,000 results, median (min–max) | {engine['sync_drain_1000_s']['median'] * 1000:.1f} ({engine['sync_drain_1000_s']['min'] * 1000:.1f}–{engine['sync_drain_1000_s']['max'] * 1000:.1f}) ms |",
            f"| engine CPU per no-op fork task (leader fork, session sweep, result) | {engine.get('engine_cpu_per_task_s', float('nan')) * 1000:.1f} ms |",
            f"| idle worker USS, median (max) | {engine['idle_worker_uss_mb']['median']:.1f} ({engine['idle_worker_uss_mb']['max']:.1f}) MB |",
            "",
        ]
    if not str(meta["airflow"]).startswith("3."):
        lines += ["The targets are set for Airflow 3.3; on this line they are shown for reference.", ""]
    lines += ["| target | measured | limit | result |", "|---|---|---|---|"]
    for t in result["targets"]:
        value = "–" if math.isnan(t["value"]) else f"{t['value']:.2f} {t['unit']}".strip()
        lines.append(f"| {t['target']} | {value} | ≤ {t['limit']:g} {t['unit']} | {t['status']} |")
    return "\n".join(lines) + "\n"


def _tasks(row: dict[str, Any]) -> str:
    return {"python": "50", "bash": "50", "python1000": "1,000", "mapped1000": "1,000 mapped"}.get(row["dag"], "?")


def scale_chart(result: dict[str, Any], path: Path) -> bool:
    """Per-task cost from 50 to 1,000 tasks at p=16: wall per task and scheduler-tree CPU per task."""
    summary = result.get("scale_summary") or []
    if not summary:
        return False
    plt = pyplot()
    if plt is None:
        return False

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for executor in dict.fromkeys(r["executor"] for r in summary):
        for dag, marker in (("python1000", "o"), ("mapped1000", "s")):
            small = _find(summary, executor, 16, "python")
            big = _find(summary, executor, 16, dag)
            if not small or not big:
                continue
            xs = [50, 1000]
            walls = [small["wall_s"]["median"] / 50, big["wall_s"]["median"] / 1000]
            cpus = [small["sched_cpu_s_per_task"]["median"], big["sched_cpu_s_per_task"]["median"]]
            label = f"{executor} ({'independent' if dag == 'python1000' else 'mapped'})"
            axes[0].plot(xs, walls, marker=marker, label=label)
            axes[1].plot(xs, cpus, marker=marker, label=label)
    for ax, title in ((axes[0], "DAG-run wall per task (s)"), (axes[1], "scheduler-tree CPU per task (s)")):
        ax.set_xscale("log")
        ax.set_xticks([50, 1000])
        ax.set_xticklabels(["50", "1,000"])
        ax.set_xlabel("task instances in the DAG run")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"Per-task cost, 50 → 1,000 tasks at parallelism 16 — Airflow {result['meta']['airflow']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def chart(result: dict[str, Any], path: Path) -> bool:
    """Bars of median wall time and queued→running p50 per configuration, min–max as error bars."""
    summary = result["summary"]
    if not summary:
        return False
    plt = pyplot()
    if plt is None:
        return False

    dags = sorted({r["dag"] for r in summary})
    configs = list(dict.fromkeys(r["config"] for r in summary))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(dags))
    for ax, metric, title in (
        (axes[0], "wall_s", "DAG run wall time (s)"),
        (axes[1], "q2r_p50_s", "queued → running p50 (s)"),
    ):
        for i, dag in enumerate(dags):
            xs, meds, lo, hi = [], [], [], []
            for j, config in enumerate(configs):
                row = next((r for r in summary if r["config"] == config and r["dag"] == dag), None)
                if row is None:
                    continue
                stat = row[metric]
                xs.append(j + i * width)
                meds.append(stat["median"])
                lo.append(stat["median"] - stat["min"])
                hi.append(stat["max"] - stat["median"])
            ax.bar(xs, meds, width, yerr=[lo, hi], capsize=3, label=f"{dag} DAG")
        ax.set_xticks([j + width * (len(dags) - 1) / 2 for j in range(len(configs))])
        ax.set_xticklabels(configs, rotation=20, ha="right")
        ax.set_title(title)
        ax.legend()
    meta = result["meta"]
    fig.suptitle(
        f"forklift vs Airflow's LocalExecutor — Airflow {meta['airflow']}, 50 no-op tasks, {meta['cpus']} CPUs"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def profile_summary(directory: Path, top: int = 12) -> str:
    """From py-spy's collapsed stacks per run: samples per configuration, and where they went (the
    innermost frame in the api-server's own code paths, grouped by function), for comparison."""
    by_config: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    totals: dict[str, int] = defaultdict(int)
    for path in sorted(directory.glob("api-*.txt")):
        config = path.stem.rsplit("-", 1)[0].removeprefix("api-")
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = stack.split(";")
            leaf = frames[-1] if frames else "?"
            name = leaf.split(" (")[0]
            by_config[config][name] += int(count)
            totals[config] += int(count)
    lines = ["| configuration | samples (200/s, all runs) | top functions (share of samples) |", "|---|---|---|"]
    for config, counts in by_config.items():
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        share = ", ".join(f"{name} {count / totals[config]:.0%}" for name, count in ranked)
        lines.append(f"| {config} | {totals[config]} | {share} |")
    return "\n".join(lines) + "\n"

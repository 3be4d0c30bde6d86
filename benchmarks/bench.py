"""``make bench``: forklift against Airflow's own LocalExecutor on this machine, in the same run.

Prints a Markdown table and each target with PASS/FAIL, and writes the same data as JSON (plus a
PNG chart of the end-to-end comparison) under ``benchmarks/results/``. A benchmark, not a test: a
missed target is reported, never an error exit.

    python benchmarks/bench.py                 # engine + end to end, 3 runs each
    python benchmarks/bench.py --runs 5 --parallelism 4
    python benchmarks/bench.py --skip-e2e      # engine only (no Airflow processes)
    python benchmarks/bench.py --scale         # also 50 vs 1,000 tasks at parallelism 16: with --scale-runs 1,
                                               # ~17 min on Airflow 3.x, ~35 min on 2.x (2 cores); 2 runs by default
    python benchmarks/bench.py --footprint     # also scheduler-tree PSS at p=32, busy and idle (adds ~6 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from forklift import __version__  # noqa: E402
from forklift.testing.postgres import PostgresServer  # noqa: E402
from forklift.testing.stack import AirflowStack, airflow_major  # noqa: E402

import e2e_bench  # noqa: E402
import engine_bench  # noqa: E402
import report  # noqa: E402


def configs(parallelisms: list[int]) -> list[e2e_bench.Config]:
    """forklift (tuned, then at the defaults) and Airflow's own alternate; parallelism 0 exists for forklift only."""
    out = []
    for p in parallelisms:
        out.append(e2e_bench.Config("forklift", p))
        if p > 0:
            out.append(e2e_bench.Config("airflow", p))
            out.append(e2e_bench.Config("forklift-defaults", p))
    return out


#: The scale rows: the same executors at parallelism 16, on 50 and on 1,000 tasks.
SCALE_PARALLELISM = 16
SCALE_DAGS = ["python", "python1000", "mapped1000"]


def scale_configs() -> list[e2e_bench.Config]:
    p = SCALE_PARALLELISM
    return [e2e_bench.Config("forklift", p), e2e_bench.Config("airflow", p), e2e_bench.Config("forklift-defaults", p)]


def footprint_configs() -> list[e2e_bench.Config]:
    return [e2e_bench.Config(name, 32) for name in ("airflow", "forklift", "forklift-idle")]


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("AIRFLOW__FORKLIFT__"):
            raise SystemExit(f"--forklift-env {pair!r}: expected AIRFLOW__FORKLIFT__<KEY>=<value>")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")), help="runs per configuration (≥ 3)"
    )
    parser.add_argument("--parallelism", default="4,32,0", help="comma-separated; 0 runs forklift only")
    parser.add_argument("--dags", default="python,bash", help="comma-separated: python, bash")
    parser.add_argument("--skip-e2e", action="store_true", help="engine benchmarks only")
    parser.add_argument("--skip-engine", action="store_true", help="end-to-end benchmarks only")
    parser.add_argument("--quick", action="store_true", help="fewer engine samples (for a smoke run)")
    parser.add_argument(
        "--forklift-env",
        action="append",
        default=[],
        metavar="AIRFLOW__FORKLIFT__KEY=VALUE",
        help="extra forklift setting for its scheduler runs (repeatable), e.g. to compare prefetch values",
    )
    parser.add_argument(
        "--scale", action="store_true", help=f"add the scale rows: 50 vs 1,000 tasks at parallelism {SCALE_PARALLELISM}"
    )
    parser.add_argument("--scale-runs", type=int, default=2, help="runs per configuration for the scale rows")
    parser.add_argument(
        "--footprint", action="store_true", help="add scheduler-tree PSS at p=32, busy and idle (with idle_timeout)"
    )
    parser.add_argument(
        "--profile-api",
        type=Path,
        metavar="DIR",
        help="py-spy the api-server during each end-to-end DAG run; collapsed stacks and a summary go to DIR",
    )
    parser.add_argument("--only-extra", action="store_true", help="with --scale/--footprint: skip the default rows")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--keep-home", action="store_true", help="keep the AIRFLOW_HOME (component logs) for a profile")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if report.pyplot() is None:
        print("bench: matplotlib is not installed (make bench installs requirements/bench.txt): tables only, no charts")
    parallelisms = [int(p) for p in args.parallelism.split(",") if p.strip()]
    dags = [d.strip() for d in args.dags.split(",") if d.strip()]
    extra_env = parse_env(args.forklift_env)

    import airflow

    major = airflow_major()
    started = time.monotonic()
    result: dict[str, Any] = {
        "meta": {
            "forklift": __version__,
            "airflow": airflow.__version__,
            "database": "SQLite" if major >= 3 else "PostgreSQL 15",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "load_before": list(os.getloadavg()),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "runs": args.runs,
            "scale_runs": args.scale_runs if args.scale else None,
            "forklift_env": extra_env,
        },
        "runs": [],
        "summary": [],
        "engine": None,
        "scale_runs": [],
        "scale_summary": [],
        "footprint_runs": [],
        "footprint_summary": [],
    }
    if args.only_extra:
        args.skip_engine = args.skip_e2e = True
    if not args.skip_engine:
        print("engine benchmarks (no scheduler) …", flush=True)
        result["engine"] = engine_bench.run(major, quick=args.quick)
    if not args.skip_e2e:
        print(
            f"end to end on Airflow {airflow.__version__}: {args.runs} run(s) × {len(configs(parallelisms))} configurations …",
            flush=True,
        )
        if args.profile_api:
            args.profile_api.mkdir(parents=True, exist_ok=True)
        result["runs"] = run_e2e(
            args.runs,
            configs(parallelisms),
            dags,
            extra_env,
            major,
            keep_home=args.keep_home,
            profile_dir=args.profile_api,
        )
        result["summary"] = report.summarize(result["runs"])
        if args.profile_api:
            summary = report.profile_summary(args.profile_api)
            (args.profile_api / "summary.md").write_text(summary)
            print(summary)
    if args.scale:
        print(
            f"scale rows on Airflow {airflow.__version__}: {args.scale_runs} run(s) × {len(scale_configs())} configurations …"
        )
        result["scale_runs"] = run_e2e(args.scale_runs, scale_configs(), SCALE_DAGS, extra_env, major)
        result["scale_summary"] = report.summarize(result["scale_runs"])
    if args.footprint:
        print(f"footprint rows (p=32, idle after {e2e_bench.IDLE_TIMEOUT} s + 20 s) …", flush=True)
        result["footprint_runs"] = run_e2e(
            1, footprint_configs(), ["python"], extra_env, major, idle_after=e2e_bench.IDLE_TIMEOUT + 20
        )
        result["footprint_summary"] = report.summarize(result["footprint_runs"])
    result["meta"]["load_after"] = list(os.getloadavg())
    result["meta"]["took_s"] = round(time.monotonic() - started)
    result["targets"] = report.targets(result["summary"], result["engine"], dags if not args.skip_e2e else [])
    result["targets"] += report.extra_targets(result["scale_summary"], result["footprint_summary"])

    table = report.markdown(result)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-airflow{airflow.__version__}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    json_path = args.out / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    # One "latest" per Airflow line (3.4 and 3.3 must not overwrite each other), and apart for runs of the
    # extra rows alone, so they never replace the default table.
    from forklift.lines import LINE

    latest = f"latest-airflow{LINE.name}{'-extra' if args.only_extra else ''}"
    (args.out / f"{latest}.md").write_text(table)
    (args.out / f"{latest}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    written = [json_path, args.out / f"{latest}.md"]
    png = args.out / f"{latest}.png"
    if report.chart(result, png):
        written.append(png)
    scale_png = args.out / f"{latest}-scale.png"
    if report.scale_chart(result, scale_png):
        written.append(scale_png)
    print(
        "written: " + ", ".join(str(p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p) for p in written)
    )
    print(f"(benchmark took {result['meta']['took_s']} s)")
    return 0


def run_e2e(
    runs: int,
    cfgs: list[e2e_bench.Config],
    dags: list[str],
    extra_env: dict[str, str],
    major: int,
    *,
    keep_home: bool = False,
    idle_after: float = 0,
    profile_dir: Path | None = None,
) -> list[dict[str, Any]]:
    home = Path(tempfile.mkdtemp(prefix="forklift-bench-"))
    if keep_home:
        print(f"AIRFLOW_HOME={home} (kept)", flush=True)
    database = None
    if major < 3:  # Airflow 2 refuses SQLite with any parallel executor
        database = PostgresServer()
        database.start()
    try:
        env = {
            # Nothing but the executor may limit concurrency.
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "256",
        }
        with AirflowStack(home, e2e_bench.DAGS, sql_alchemy_conn=database.url if database else None, env=env) as stack:
            stack.migrate()
            stack.start_services()
            return e2e_bench.run(stack, cfgs, runs, dags, extra_env, idle_after=idle_after, profile_dir=profile_dir)
    finally:
        if database is not None:
            database.stop()
        if not keep_home:
            import shutil

            shutil.rmtree(home, ignore_errors=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())

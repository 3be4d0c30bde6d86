"""forklift's own settings, parsed and validated in one place.

Everything here is pure: a ``lookup(section, key) -> str | None`` function is the only way
in, so the rules can be tested without Airflow and the Airflow adapter stays thin. Every
refusal names the setting, the value and what to do, because the scheduler prints only the
exception's message when it refuses to start.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

Lookup = Callable[[str, str], "str | None"]

SECTION = "forklift"


class ConfigError(ValueError):
    """A forklift setting has a value forklift cannot use."""


class RunMode(str, enum.Enum):
    """How a worker runs one task."""

    FORK = "fork"  # fork a child of the warm worker: fast, shares the loaded code
    SUBPROCESS = "subprocess"  # a fresh interpreter: slower, picks up code changes


class OnShutdown(str, enum.Enum):
    """What ``end()`` does with tasks still running once ``shutdown_timeout`` has passed."""

    ADOPT = "adopt"  # leave them running; the next scheduler on this machine adopts them
    STOP = "stop"  # stop them (SIGTERM, SIGKILL after kill_grace); Airflow resets and reruns them


#: The least time an orphaned task waits to be adopted by default: room for a scheduler restart.
MIN_DEFAULT_ORPHAN_TIMEOUT = 120.0


@dataclass(frozen=True)
class Settings:
    """What forklift needs from configuration, already validated."""

    parallelism: int
    run_mode: RunMode = RunMode.FORK
    #: How long ``end()`` waits for running tasks before stopping them.
    shutdown_timeout: float = 30.0
    #: How long a stopped task gets between SIGTERM and SIGKILL.
    kill_grace: float = 5.0
    #: Replace a QueuedLocalWorker after this many tasks (0: never).
    max_tasks_per_child: int = 0
    #: Replace a QueuedLocalWorker whose RSS exceeds this many MiB between tasks (0: never).
    max_memory_per_child: int = 0
    #: Replace a QueuedLocalWorker whose RSS has grown this many MiB over its size after start (0: never).
    max_memory_growth_per_child: int = 0
    #: LimitedParallelism: workers idle this many seconds leave the pool, down to min_workers (0: never).
    idle_timeout: float = 0.0
    min_workers: int = 0
    #: Seconds past a task's execution_timeout before forklift stops it from outside (-1: never).
    timeout_grace: float = 30.0
    #: LimitedParallelism: how many tasks forklift accepts per worker (as Celery's
    #: ``worker_prefetch_multiplier``). 1: a task is queued only when a worker is free. More: the
    #: extra ones wait on the task queue, and a worker that finishes starts the next at once instead
    #: of after the scheduler's next loop (which sleeps up to 1 s when it thinks it is idle).
    prefetch_multiplier: int = 4
    #: Modules imported in the scheduler before workers fork, so that no task imports them itself.
    preload_modules: tuple[str, ...] = ()
    #: True when ``parallelism`` came from ``[core] parallelism`` (``[forklift] parallelism`` unset).
    parallelism_from_core: bool = False
    #: Airflow 3: wake the Task SDK supervisor when its task process exits (see supervisor_wake).
    wake_supervisor: bool = True
    #: What end() does with tasks still running after shutdown_timeout.
    on_shutdown: OnShutdown = OnShutdown.ADOPT
    #: How long a task whose scheduler is gone runs on unadopted before forklift stops it (0: at once).
    orphan_timeout: float = 630.0
    #: Where running tasks leave their records for the next scheduler (None: the executor's default).
    records_dir: str | None = None
    #: Memory limit in MiB for each task's process tree (0: none); a task's executor_config may override it.
    task_memory_limit: int = 0
    #: oom_score_adj each task process raises itself to (0: leave it alone).
    task_oom_score_adj: int = 500

    @property
    def unlimited(self) -> bool:
        return self.parallelism == 0

    @property
    def prefetch(self) -> int:
        """Tasks held ready beyond the running ones (LimitedParallelism only)."""
        return 0 if self.unlimited else self.parallelism * (self.prefetch_multiplier - 1)

    @property
    def slots(self) -> int:
        """Tasks forklift accepts at once, running or held ready (0: no limit of forklift's own)."""
        return self.parallelism + self.prefetch

    @property
    def strategy_name(self) -> str:
        return "UnlimitedParallelism" if self.unlimited else "LimitedParallelism"


def _describe(section: str, key: str) -> str:
    env = f"AIRFLOW__{section.upper()}__{key.upper()}"
    return f"[{section}] {key} (env {env})"


def parse_int(raw: str | None, *, section: str, key: str, minimum: int, maximum: int) -> int:
    text = (raw or "").strip()
    where = _describe(section, key)
    if not text:
        raise ConfigError(f"{where} is empty; set it to a whole number from {minimum} to {maximum}.")
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(
            f"{where} = {raw!r} is not a whole number; set it to a whole number from {minimum} to {maximum}."
        ) from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{where} = {value} is out of range; set it to a whole number from {minimum} to {maximum}.")
    return value


def parse_seconds(raw: str | None, *, section: str, key: str, maximum: float) -> float:
    text = (raw or "").strip()
    where = _describe(section, key)
    if not text:
        raise ConfigError(f"{where} is empty; set it to a number of seconds from 0 to {maximum:g}.")
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"{where} = {raw!r} is not a number of seconds; use a number from 0 to {maximum:g}."
        ) from None
    if not math.isfinite(value) or not 0 <= value <= maximum:
        raise ConfigError(f"{where} = {raw!r} is out of range; use a number of seconds from 0 to {maximum:g}.")
    return value


_TRUE = {"true", "t", "1", "yes", "y", "on"}
_FALSE = {"false", "f", "0", "no", "n", "off"}


def parse_bool(raw: str | None, *, section: str, key: str) -> bool:
    text = (raw or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{_describe(section, key)} = {raw!r} is not a boolean; use True or False.")


def parse_run_mode(raw_mode: str | None, raw_new_interpreter: str | None) -> RunMode:
    """``[forklift] run_mode`` wins; unset, it follows ``[core] execute_tasks_new_python_interpreter``."""
    if raw_mode is not None and raw_mode.strip():
        text = raw_mode.strip().lower()
        try:
            return RunMode(text)
        except ValueError:
            raise ConfigError(
                f"{_describe(SECTION, 'run_mode')} = {raw_mode!r} is not a run mode; use 'fork' or 'subprocess' "
                "(or leave it unset to follow [core] execute_tasks_new_python_interpreter)."
            ) from None
    if raw_new_interpreter is None or not raw_new_interpreter.strip():
        return RunMode.FORK
    new_interpreter = parse_bool(raw_new_interpreter, section="core", key="execute_tasks_new_python_interpreter")
    return RunMode.SUBPROCESS if new_interpreter else RunMode.FORK


#: Beyond this a typo is likelier than a plan: each worker is a process of its own.
MAX_PARALLELISM = 10_000
#: A day: anything longer is a mistake, and waiting forever is what forklift exists to avoid.
MAX_SECONDS = 86_400.0
#: 1 TiB in MiB: the largest memory limit that is not a typo.
MAX_MEMORY_MIB = 1_048_576


def load_settings(lookup: Lookup, *, parallelism: int | None = None) -> Settings:
    """Read and validate forklift's settings.

    ``parallelism`` given by the caller (tests, embedding code) wins over configuration.
    Otherwise ``[forklift] parallelism`` is read, falling back to ``[core] parallelism``;
    forklift needs its own key because Airflow 3 refuses ``[core] parallelism = 0``.
    """
    from_core = False
    if parallelism is None:
        raw = lookup(SECTION, "parallelism")
        section = SECTION
        if raw is None:
            raw, section = lookup("core", "parallelism"), "core"
        if raw is None:
            raw = "32"  # Airflow's own default for [core] parallelism
        parallelism = parse_int(raw, section=section, key="parallelism", minimum=0, maximum=MAX_PARALLELISM)
        from_core = section == "core"
    elif isinstance(parallelism, bool) or not isinstance(parallelism, int) or not 0 <= parallelism <= MAX_PARALLELISM:
        raise ConfigError(
            f"parallelism={parallelism!r} is invalid; pass a whole number from 0 (one process per task) "
            f"to {MAX_PARALLELISM}."
        )

    run_mode = parse_run_mode(lookup(SECTION, "run_mode"), lookup("core", "execute_tasks_new_python_interpreter"))

    def seconds(key: str, default: float) -> float:
        raw = lookup(SECTION, key)
        if raw is None:
            return default
        return parse_seconds(raw, section=SECTION, key=key, maximum=MAX_SECONDS)

    def count(key: str, maximum: int) -> int:
        raw = lookup(SECTION, key)
        if raw is None:
            return 0
        return parse_int(raw, section=SECTION, key=key, minimum=0, maximum=maximum)

    raw_grace = lookup(SECTION, "timeout_grace")
    if raw_grace is not None and raw_grace.strip() == "-1":
        timeout_grace = -1.0
    else:
        timeout_grace = seconds("timeout_grace", Settings.timeout_grace)

    min_workers = count("min_workers", MAX_PARALLELISM)
    if parallelism and min_workers > parallelism:
        raise ConfigError(
            f"{_describe(SECTION, 'min_workers')} = {min_workers} is more than the {parallelism} workers there are "
            f"([forklift] parallelism); set it from 0 to {parallelism}."
        )

    raw_multiplier = lookup(SECTION, "prefetch_multiplier")
    if raw_multiplier is None:
        multiplier = Settings.prefetch_multiplier
    else:
        multiplier = parse_int(raw_multiplier, section=SECTION, key="prefetch_multiplier", minimum=1, maximum=1000)
    preload = tuple(m.strip() for m in (lookup(SECTION, "preload_modules") or "").split(",") if m.strip())
    bad = [m for m in preload if not all(part.isidentifier() for part in m.split("."))]
    if bad:
        raise ConfigError(
            f"{_describe(SECTION, 'preload_modules')} names {', '.join(map(repr, bad))}, which is not a module "
            "name; give a comma-separated list like 'pandas, my_company.operators'."
        )

    raw_on_shutdown = (lookup(SECTION, "on_shutdown") or OnShutdown.ADOPT.value).strip().lower()
    try:
        on_shutdown = OnShutdown(raw_on_shutdown)
    except ValueError:
        raise ConfigError(
            f"{_describe(SECTION, 'on_shutdown')} = {lookup(SECTION, 'on_shutdown')!r} is not a choice; use 'adopt' "
            "(leave running tasks for the next scheduler) or 'stop' (stop them when the scheduler stops)."
        ) from None
    raw_orphan = lookup(SECTION, "orphan_timeout")
    if raw_orphan is None:
        orphan_timeout = default_orphan_timeout(lookup)
    else:
        orphan_timeout = parse_seconds(raw_orphan, section=SECTION, key="orphan_timeout", maximum=MAX_SECONDS)
    records_dir = (lookup(SECTION, "records_dir") or "").strip() or None
    raw_limit = lookup(SECTION, "task_memory_limit")
    memory_limit = (
        0
        if raw_limit is None
        else parse_int(raw_limit, section=SECTION, key="task_memory_limit", minimum=0, maximum=MAX_MEMORY_MIB)
    )
    raw_adj = lookup(SECTION, "task_oom_score_adj")
    oom_adj = (
        Settings.task_oom_score_adj
        if raw_adj is None
        else parse_int(raw_adj, section=SECTION, key="task_oom_score_adj", minimum=0, maximum=1000)
    )

    raw_wake = lookup(SECTION, "wake_supervisor")
    wake = True if raw_wake is None else parse_bool(raw_wake, section=SECTION, key="wake_supervisor")

    return Settings(
        parallelism=parallelism,
        run_mode=run_mode,
        shutdown_timeout=seconds("shutdown_timeout", Settings.shutdown_timeout),
        kill_grace=seconds("kill_grace", Settings.kill_grace),
        max_tasks_per_child=count("max_tasks_per_child", 1_000_000_000),
        max_memory_per_child=count("max_memory_per_child", 1_048_576),  # 1 TiB, in MiB
        max_memory_growth_per_child=count("max_memory_growth_per_child", 1_048_576),
        idle_timeout=seconds("idle_timeout", 0.0),
        min_workers=min_workers,
        timeout_grace=timeout_grace,
        prefetch_multiplier=multiplier,
        preload_modules=preload,
        wake_supervisor=wake,
        parallelism_from_core=from_core,
        on_shutdown=on_shutdown,
        orphan_timeout=orphan_timeout,
        records_dir=records_dir,
        task_memory_limit=memory_limit,
        task_oom_score_adj=oom_adj,
    )


#: A task is held ready beyond the running ones only while a worker should take it within this many
#: seconds (see LimitedParallelism.ready_budget): long enough to cover the scheduler's loop and its 1 s
#: idle sleep several times over, far below ``[scheduler] task_queued_timeout`` (600 s by default).
READY_HORIZON = 10.0


def executor_names(raw: str) -> list[str]:
    """The executors a ``[core] executor`` value names: ``a,b``, ``alias:module.Class`` and the multi-team
    ``team=...;...`` forms, each reduced to its class path (or Airflow's short name)."""
    names = []
    for chunk in raw.replace(";", ",").split(","):
        name = chunk.split("=")[-1].split(":")[-1].strip()
        if name:
            names.append(name)
    return names


def holds_ready_beyond_cap(settings: Settings, lookup: Lookup) -> bool:
    """Whether the tasks forklift holds ready stay out of what the scheduler counts against ``[core] parallelism``.

    The scheduler queues no more than ``[core] parallelism`` task instances, queued or running, across
    all its executors. A held task is queued, not running, but counting it means a worker that comes
    free waits a whole scheduler loop (up to its 1 s idle sleep, plus the loop) for its next task.
    When forklift is the scheduler's only executor and has no more workers than the cap, the workers
    alone keep running tasks within the cap, so the held ones need not count. Beside other executors
    a slot left uncounted could go to their tasks and push the total running past the cap, so then
    everything counts.
    """
    if settings.unlimited or settings.prefetch == 0:
        return False
    if len(executor_names(lookup("core", "executor") or "")) != 1:
        return False
    try:
        cap = int(lookup("core", "parallelism") or "32")
    except ValueError:
        return False
    return 0 < settings.parallelism <= cap


def default_orphan_timeout(lookup: Lookup) -> float:
    """Long enough for a restarted scheduler to adopt: Airflow's health threshold plus two orphan
    checks (630 s at Airflow's defaults of 30 s and 300 s), and never under two minutes."""

    def airflow_seconds(key: str, default: float) -> float:
        try:
            return max(0.0, float(lookup("scheduler", key) or default))
        except ValueError:
            return default

    threshold = airflow_seconds("scheduler_health_check_threshold", 30.0)
    interval = airflow_seconds("orphaned_tasks_check_interval", 300.0)
    return max(MIN_DEFAULT_ORPHAN_TIMEOUT, threshold + 2 * interval)


def task_memory_limit(executor_config: object, default: int) -> int:
    """A task's memory limit in MiB: ``executor_config={"forklift": {"memory_limit_mb": N}}`` (0: none)
    overrides ``[forklift] task_memory_limit``. A malformed value fails that task, never the scheduler."""
    if not isinstance(executor_config, dict) or "forklift" not in executor_config:
        return default
    ours = executor_config["forklift"]
    if not isinstance(ours, dict):
        raise ConfigError(
            f"executor_config['forklift'] = {ours!r} is not a dict; use {{'forklift': {{'memory_limit_mb': 2048}}}}."
        )
    if "memory_limit_mb" not in ours:
        return default
    value = ours["memory_limit_mb"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MEMORY_MIB:
        raise ConfigError(
            f"executor_config['forklift']['memory_limit_mb'] = {value!r} is invalid; use a whole number of MiB "
            f"from 0 (no limit) to {MAX_MEMORY_MIB}."
        )
    return value

"""``forklift.LocalExecutor``: the thin adapter between Airflow's scheduler and the engine.

The scheduler calls ``heartbeat()`` → ``trigger_tasks()`` → :meth:`LocalExecutor._process_workloads`
(the only place work is dispatched, after the scheduler has committed the QUEUED state), then
``sync()``, which reads the engine's results without blocking and turns them into executor events.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from airflow.executors.base_executor import BaseExecutor

from forklift.doctor import WARN, check_scheduler_cap
from forklift.handover import RecordsDir
from forklift.jobs import SUCCESS, Cause, Finished, Result, Started, WorkQueue
from forklift.lines import LINE
from forklift.lines.cli_commands import CommandRejected
from forklift.settings import (
    READY_HORIZON,
    ConfigError,
    OnShutdown,
    RunMode,
    Settings,
    holds_ready_beyond_cap,
    load_settings,
    task_memory_limit,
)
from forklift.shutdown import ExitSignalGuard, SecondSignal
from forklift.strategies import EngineOptions, Strategy, make_strategy
from forklift.timeouts import hard_deadline

if TYPE_CHECKING:
    from forklift.lines.cli_commands import CommandLine
    from forklift.lines.task_sdk import TaskSdkLine

    _LineTraits = object
else:
    # The capability flags this Airflow line's BaseExecutor reads, declared only where they exist.
    _LineTraits = LINE.traits

log = logging.getLogger(__name__)


class LocalExecutor(_LineTraits, BaseExecutor):
    """Runs Airflow tasks in local processes.

    ``[forklift] parallelism`` (falling back to ``[core] parallelism``): ``0`` starts one
    ``LocalWorker`` process per task (``UnlimitedParallelism``); ``N > 0`` starts exactly N
    ``QueuedLocalWorker`` processes fed from a task queue (``LimitedParallelism``).
    ``[forklift] run_mode``: ``fork`` (default) or ``subprocess``; unset, it follows
    ``[core] execute_tasks_new_python_interpreter``.

    Its flags (``is_local``, callbacks, connection tests, teams…) come from the line's traits
    (:mod:`forklift.lines`).
    """

    def __init__(self, parallelism: int | None = None, *args: Any, **kwargs: Any) -> None:
        team_name = kwargs.get("team_name")
        lookup = LINE.config_lookup(team_name)
        self.settings: Settings = load_settings(lookup, parallelism=parallelism)
        # The slots the scheduler sees: the workers, plus the tasks held ready for them (prefetch).
        slots = LINE.base_parallelism(self.settings.parallelism, lookup) + self.settings.prefetch
        super().__init__(slots, *args, **kwargs)
        self._core_cap = LINE.scheduler_cap(lookup)
        self._held_beyond_cap = holds_ready_beyond_cap(self.settings, lookup)
        self.strategy: Strategy | None = None
        # What to report for each dispatched key: the workload's own success/failure states.
        self._outcome_states: dict[Hashable, tuple[Any, Any]] = {}
        # ... and, for callbacks and connection tests, the state that says they started.
        self._running_states: dict[Hashable, Any] = {}
        self._server: str = ""
        # Work refused at dispatch: reported from sync(), when Airflow 2's trigger_tasks has put the
        # key in running (it does so after execute_async returns), so no slot leaks.
        self._refused: list[Finished] = []
        self._metrics_sent: dict[str, int] = {}
        self._signal_guard = ExitSignalGuard()

    def __repr__(self) -> str:
        return (
            f"forklift.LocalExecutor(parallelism={self.settings.parallelism}, "
            f"strategy={self.settings.strategy_name}, run_mode={self.settings.run_mode.value})"
        )

    @property
    def result_queue(self) -> WorkQueue | None:
        """The ``multiprocessing.Manager()`` queue workers report on (None when not started)."""
        return self.strategy.result_queue if self.strategy is not None else None

    def start(self) -> None:
        self._server = LINE.execution_api_url(getattr(self, "conf", None))  # Airflow 2 has no ExecutorConf
        if self.settings.run_mode is RunMode.FORK:
            LINE.warm_task_caches(self.settings.preload_modules)  # before any worker forks: every task inherits them
        records = self._records_dir()
        self.strategy = make_strategy(
            self.settings.parallelism,
            EngineOptions(
                kill_grace=self.settings.kill_grace,
                worker_init=LINE.dispose_inherited_db_pool,
                max_tasks_per_child=self.settings.max_tasks_per_child,
                max_memory_per_child=self.settings.max_memory_per_child,
                max_memory_growth_per_child=self.settings.max_memory_growth_per_child,
                idle_timeout=self.settings.idle_timeout,
                min_workers=self.settings.min_workers,
                prefetch=self.settings.prefetch,
                records=records,
                orphan_timeout=self.settings.orphan_timeout,
                oom_score_adj=self.settings.task_oom_score_adj,
            ),
        )
        self.strategy.start()
        # After the workers fork (they set their own handlers): the scheduler's exit handler is
        # already installed by now, and must not be able to wedge it (see ExitSignalGuard).
        self._signal_guard.install()
        cap = check_scheduler_cap(self.settings, self._core_cap, self._held_beyond_cap)  # as `forklift doctor` says it
        if cap.status == WARN:
            self.log.warning("forklift: %s.", cap.message)
        else:
            self.log.info("forklift: %s.", cap.message)
        self.log.info(
            "forklift started: %s, parallelism %d, run mode %s, prefetch %d (scheduler slots %d)",
            self.settings.strategy_name,
            self.settings.parallelism,
            self.settings.run_mode.value,
            self.settings.prefetch,
            self.parallelism,
        )
        if self.settings.idle_timeout and not self.settings.unlimited:
            self.log.info(
                "forklift: workers idle for %g s leave the pool, down to %d ([forklift] idle_timeout, min_workers)",
                self.settings.idle_timeout,
                self.settings.min_workers,
            )

    def _records_dir(self) -> RecordsDir:
        """Where running tasks leave their records for the next scheduler (see forklift.handover)."""
        path = self.settings.records_dir or LINE.default_records_dir()
        try:
            records = RecordsDir(path).ensure()
            # Records of tasks that ended while no scheduler watched, and that no scheduler adopted.
            records.sweep(older_than=self.settings.orphan_timeout + 3600)
        except OSError as exc:
            raise ConfigError(f"{exc}; set [forklift] records_dir to a directory this user can write.") from exc
        return records

    # -- adoption (a scheduler restarted, or another one died) -------------------------------
    def try_adopt_task_instances(self, tis: Sequence[Any]) -> Sequence[Any]:
        """Adopt each task instance a forklift worker on this machine still runs (or has just finished);
        return the rest, which Airflow resets. An adopted task holds a slot until its end is reported."""
        if self.strategy is None:
            return tis
        not_adopted = []
        for ti in tis:
            try:
                key = LINE.task_key(self, ti)
                adopted = self.strategy.adopt(key)
            except Exception:  # adoption is a bonus: when it fails, Airflow's reset still applies
                self.log.exception("forklift: could not adopt %s", ti)
                adopted = False
            if adopted:
                self.running.add(key)
            else:
                not_adopted.append(ti)
        if len(not_adopted) < len(tis):
            self.log.info("forklift: adopted %d of %d orphaned task instance(s)", len(tis) - len(not_adopted), len(tis))
        return not_adopted

    # -- dispatch (Airflow 3) --------------------------------------------------------------
    def _process_workloads(self, workloads: Sequence[Any]) -> None:
        strategy = self._require_started()
        line = cast("TaskSdkLine", LINE)
        for workload in workloads:
            key: Any = line.workload_key(workload)
            LINE.unqueue(self, key)
            states = line.states(workload)
            self._outcome_states[key] = (states.success, states.failure)
            if states.running is not None:
                self._running_states[key] = states.running
            # The slot stays taken until the result is read: this is the scheduler's backpressure.
            self.running.add(key)
            try:
                deadline = hard_deadline(line.execution_timeout(workload), self.settings.timeout_grace)
                memory_limit = task_memory_limit(line.executor_config(workload), self.settings.task_memory_limit)
                strategy.submit(
                    line.to_job(
                        workload,
                        mode=self.settings.run_mode,
                        server=self._server,
                        timeout=deadline,
                        wake_supervisor=self.settings.wake_supervisor,
                        memory_limit=memory_limit,
                    )
                )
            except Exception as exc:  # noqa: BLE001 - whatever a workload does wrong fails that task, never the loop
                self._refuse(key, exc)

    # -- dispatch (Airflow 2) --------------------------------------------------------------
    def execute_async(self, key: Any, command: Any, queue: str | None = None, executor_config: Any = None) -> None:
        strategy = self._require_started()
        line = cast("CommandLine", LINE)
        try:
            deadline = hard_deadline(line.execution_timeout(key), self.settings.timeout_grace)
            memory_limit = task_memory_limit(executor_config, self.settings.task_memory_limit)
            strategy.submit(
                line.to_job(key, command, mode=self.settings.run_mode, timeout=deadline, memory_limit=memory_limit)
            )
        except Exception as exc:  # noqa: BLE001 - whatever a command does wrong fails that task, never the loop
            self._refuse(key, exc)

    def _refuse(self, key: Any, exc: Exception) -> None:
        if isinstance(exc, (CommandRejected, ConfigError)):
            cause, reason = Cause.REFUSED, str(exc)
        else:
            cause, reason = Cause.NOT_STARTED, f"forklift could not dispatch it: {type(exc).__name__}: {exc}"
        self.log.error("forklift: %s not run: %s", key, reason)
        self._refused.append(Finished.failed(key, cause, reason))

    @property
    def slots_occupied(self) -> int:
        """What the scheduler counts against ``[core] parallelism`` for this executor: everything it holds,
        less the tasks held ready that a worker should take within READY_HORIZON, when those need not
        count (see settings.holds_ready_beyond_cap). The workers still run no more than their number."""
        occupied: int = super().slots_occupied
        if not self._held_beyond_cap or self.strategy is None:
            return occupied
        return max(0, occupied - self.strategy.ready_budget(READY_HORIZON))

    @property
    def slots_available(self) -> int:
        """What this executor may still take: everything it holds counts here, held-ready tasks too; the
        discount above is for the scheduler's cap across executors only. Stated for every line because
        Airflow 3.4's ``BaseExecutor`` derives it from ``slots_occupied``, which would pass the discount on."""
        if not self._held_beyond_cap:
            return int(super().slots_available)
        return int(self.parallelism - super().slots_occupied)

    # -- results ---------------------------------------------------------------------------
    def heartbeat(self) -> None:
        # Airflow 2 installs the scheduler's exit handler after start(); wrap it once it is there.
        self._signal_guard.install()
        # A SIGTERM whose SystemExit Python swallowed (raised inside a finalizer) ends the loop here.
        self._signal_guard.raise_lost_exit()
        super().heartbeat()

    def _report_refused(self) -> None:
        refused, self._refused = self._refused, []
        for refusal in refused:
            self._report(refusal)

    def sync(self) -> None:
        self._report_refused()
        if self.strategy is None:
            return
        try:
            results = self.strategy.poll()
        except Exception:  # the scheduler loop must go on; the engine heals itself on the next poll
            self.log.exception("forklift: reading results failed; will try again on the next heartbeat")
            return
        for result in results:
            self._report(result)
        self._emit_forklift_metrics()

    def _emit_forklift_metrics(self) -> None:
        """forklift's own metrics, through Airflow's Stats (names in docs/metrics.md)."""
        strategy = self.strategy
        if strategy is None:
            return
        try:
            stats = LINE.stats()
            tags = LINE.metric_tags(type(self).__name__, getattr(self, "team_name", None))
            for name, value in strategy.counters.items():
                delta = value - self._metrics_sent.get(name, 0)
                if delta > 0:
                    stats.incr(f"forklift.{name}", delta, tags=tags)
            self._metrics_sent = dict(strategy.counters)
            stats.gauge("forklift.live_workers", len(strategy.worker_pids()), tags=tags)
            for seconds in strategy.take_dispatch_latencies():
                stats.timing("forklift.dispatch_latency", timedelta(seconds=seconds), tags=tags)
        except Exception:  # metrics must never cost the scheduler its loop
            self.log.debug("forklift: could not emit metrics", exc_info=True)

    # -- stuck in queued ([scheduler] task_queued_timeout) ----------------------------------
    def revoke_task(self, *, ti: Any) -> None:
        """Forget ``ti``: withdraw it if it has not started, stop its process group if it has.

        The scheduler then sets it back to scheduled (or fails it), so no event is reported for it.
        """
        key: Any = LINE.task_key(self, ti)
        LINE.unqueue(self, key)
        outcome = self.strategy.revoke(key) if self.strategy is not None else "unknown"
        self.running.discard(key)
        self._outcome_states.pop(key, None)
        self._running_states.pop(key, None)
        self.event_buffer.pop(key, None)
        self.log.info("forklift: revoked %s (%s)", key, outcome)

    def cleanup_stuck_queued_tasks(self, tis: list[Any]) -> list[str]:
        """Airflow 2's older name for the same job: revoke each and say which."""
        for ti in tis:
            self.revoke_task(ti=ti)
        return [repr(ti) for ti in tis]

    def _report(self, result: Result) -> None:
        key: Any = result.key
        if isinstance(result, Started):
            # Callbacks and connection tests say they started, as Airflow's own executor has them say:
            # the scheduler moves them to running. The slot stays held until their end.
            running_state = self._running_states.pop(key, None)
            if running_state is not None:
                self.change_state(key, running_state, remove_running=False)
            return
        self._running_states.pop(key, None)
        again = self.strategy is not None and self.strategy.waiting(key)  # queued again while this run was live
        states = self._outcome_states.get(key) if again else self._outcome_states.pop(key, None)
        success_state, failure_state = states or (None, None)
        if result.state == SUCCESS:
            if success_state is None:
                self.success(key)
            else:
                self.change_state(key, success_state)
        else:
            self.log.error("forklift: %s failed: %s", key, result.reason)
            if failure_state is None:
                self.fail(key, info=result.reason)
            else:
                self.change_state(key, failure_state, info=result.reason)
        if again:
            # Reporting the earlier run freed the key's slot; its next run holds it now. Airflow also
            # reads "still in running" as "re-queued after deferral" and does not fail the task.
            self.running.add(key)

    # -- shutdown --------------------------------------------------------------------------
    def end(self) -> None:
        # Work refused since the last sync() is failed now: its key must not stay in running.
        self._report_refused()
        if self.strategy is None:
            return
        strategy, self.strategy = self.strategy, None
        # Listen for a second signal before saying we are waiting: one sent on seeing this line
        # must stop the waiting, not interrupt end() half-way.
        leave = self.settings.on_shutdown is OnShutdown.ADOPT
        with SecondSignal() as second:
            self.log.info(
                "Shutting down forklift; waiting up to %.0f s ([forklift] shutdown_timeout) for running tasks, "
                "then %s.",
                self.settings.shutdown_timeout,
                "leaving the rest for the next scheduler to adopt" if leave else "stopping the rest",
            )
            results = strategy.end(self.settings.shutdown_timeout, escalate=second.arrived, leave_running=leave)
        self._signal_guard.uninstall()
        for result in results:
            self._report(result)

    def terminate(self) -> None:
        self._report_refused()
        if self.strategy is None:
            return
        strategy, self.strategy = self.strategy, None
        self._signal_guard.uninstall()
        for result in strategy.terminate():
            self._report(result)

    def _require_started(self) -> Strategy:
        if self.strategy is None:
            raise RuntimeError("forklift.LocalExecutor was not started; call start() first.")
        return self.strategy

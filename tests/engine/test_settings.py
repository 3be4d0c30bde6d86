"""Configuration rules: every bad value is refused with the setting's name and the value."""

from __future__ import annotations

import pytest

from forklift.settings import (
    MAX_PARALLELISM,
    ConfigError,
    RunMode,
    executor_names,
    holds_ready_beyond_cap,
    load_settings,
)

from support import lookup_from


def test_forklift_parallelism_wins_over_core() -> None:
    s = load_settings(lookup_from({("forklift", "parallelism"): "0", ("core", "parallelism"): "8"}))
    assert s.parallelism == 0 and s.unlimited and s.strategy_name == "UnlimitedParallelism"


def test_falls_back_to_core_parallelism() -> None:
    s = load_settings(lookup_from({("core", "parallelism"): "8"}))
    assert s.parallelism == 8 and s.strategy_name == "LimitedParallelism"


def test_explicit_parallelism_wins_over_config() -> None:
    assert load_settings(lookup_from({("forklift", "parallelism"): "3"}), parallelism=5).parallelism == 5


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("-1", "-1 is out of range"),
        ("four", "'four' is not a whole number"),
        ("", "is empty"),
        ("2.5", "'2.5' is not a whole number"),
        (str(MAX_PARALLELISM + 1), "is out of range"),
        ("  ", "is empty"),
    ],
)
def test_bad_parallelism_is_refused_by_name_and_value(raw: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(lookup_from({("forklift", "parallelism"): raw}))
    message = str(err.value)
    assert "[forklift] parallelism" in message and "AIRFLOW__FORKLIFT__PARALLELISM" in message
    assert fragment in message


def test_bad_core_parallelism_names_core() -> None:
    with pytest.raises(ConfigError, match=r"\[core\] parallelism.*'x'"):
        load_settings(lookup_from({("core", "parallelism"): "x"}))


@pytest.mark.parametrize("bad", [-1, 2.5, "4", True])
def test_bad_explicit_parallelism(bad: object) -> None:
    with pytest.raises(ConfigError, match="parallelism="):
        load_settings(lookup_from({}), parallelism=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "new_interpreter", "expected"),
    [
        (None, None, RunMode.FORK),
        (None, "False", RunMode.FORK),
        (None, "True", RunMode.SUBPROCESS),
        ("fork", "True", RunMode.FORK),
        ("subprocess", "False", RunMode.SUBPROCESS),
        (" Subprocess ", None, RunMode.SUBPROCESS),
        ("", "true", RunMode.SUBPROCESS),
    ],
)
def test_run_mode(mode: str | None, new_interpreter: str | None, expected: RunMode) -> None:
    values = {("core", "execute_tasks_new_python_interpreter"): new_interpreter, ("forklift", "run_mode"): mode}
    assert (
        load_settings(lookup_from({k: v for k, v in values.items() if v is not None}), parallelism=1).run_mode
        is expected
    )


def test_bad_run_mode() -> None:
    with pytest.raises(ConfigError, match=r"\[forklift\] run_mode.*'spawn'.*'fork' or 'subprocess'"):
        load_settings(lookup_from({("forklift", "run_mode"): "spawn"}), parallelism=1)
    with pytest.raises(ConfigError, match=r"execute_tasks_new_python_interpreter.*'maybe'"):
        load_settings(lookup_from({("core", "execute_tasks_new_python_interpreter"): "maybe"}), parallelism=1)


@pytest.mark.parametrize("key", ["shutdown_timeout", "kill_grace"])
@pytest.mark.parametrize("raw", ["-1", "soon", "", "nan", "inf", "1e9"])
def test_bad_seconds(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(lookup_from({("forklift", key): raw}), parallelism=1)
    assert f"[forklift] {key}" in str(err.value)


def test_seconds_defaults_and_values() -> None:
    s = load_settings(lookup_from({("forklift", "shutdown_timeout"): "2.5"}), parallelism=1)
    assert (s.shutdown_timeout, s.kill_grace) == (2.5, 5.0)


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("max_tasks_per_child", "-1"),
        ("max_tasks_per_child", "x"),
        ("max_tasks_per_child", ""),
        ("max_memory_per_child", "-5"),
        ("max_memory_per_child", "2GB"),
        ("max_memory_per_child", "99999999"),
        ("timeout_grace", "-2"),
        ("timeout_grace", "later"),
        ("max_memory_growth_per_child", "-1"),
        ("max_memory_growth_per_child", "1G"),
        ("idle_timeout", "-3"),
        ("idle_timeout", "soon"),
        ("min_workers", "-1"),
        ("min_workers", "2"),  # more than the 1 worker there is
    ],
)
def test_bad_recycling_and_timeout_settings(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(lookup_from({("forklift", key): raw}), parallelism=1)
    assert f"[forklift] {key}" in str(err.value)


def test_recycling_and_timeout_defaults_keep_todays_behaviour() -> None:
    s = load_settings(lookup_from({}), parallelism=1)
    assert (s.max_tasks_per_child, s.max_memory_per_child, s.timeout_grace) == (0, 0, 30.0)
    s = load_settings(
        lookup_from({("forklift", "timeout_grace"): "-1", ("forklift", "max_tasks_per_child"): "100"}), parallelism=1
    )
    assert (s.timeout_grace, s.max_tasks_per_child) == (-1.0, 100)


def test_the_pool_stays_at_parallelism_unless_idle_timeout_is_set() -> None:
    s = load_settings(lookup_from({}), parallelism=4)
    assert (s.idle_timeout, s.min_workers, s.max_memory_growth_per_child) == (0.0, 0, 0)
    s = load_settings(
        lookup_from({("forklift", "idle_timeout"): "300", ("forklift", "min_workers"): "4"}), parallelism=4
    )
    assert (s.idle_timeout, s.min_workers) == (300.0, 4)
    with pytest.raises(
        ConfigError, match=r"min_workers \(env \S+\) = 5 is more than the 4 workers .* set it from 0 to 4"
    ):
        load_settings(lookup_from({("forklift", "min_workers"): "5"}), parallelism=4)


@pytest.mark.parametrize(("raw", "expected"), [(None, True), ("False", False), ("off", False), ("TRUE", True)])
def test_wake_supervisor(raw: str | None, expected: bool) -> None:
    values = {} if raw is None else {("forklift", "wake_supervisor"): raw}
    assert load_settings(lookup_from(values), parallelism=1).wake_supervisor is expected


@pytest.mark.parametrize("raw", ["", "maybe", "2"])
def test_bad_wake_supervisor(raw: str) -> None:
    with pytest.raises(
        ConfigError, match=r"\[forklift\] wake_supervisor .*AIRFLOW__FORKLIFT__WAKE_SUPERVISOR.* is not a boolean"
    ):
        load_settings(lookup_from({("forklift", "wake_supervisor"): raw}), parallelism=1)


def test_prefetch_multiplier_sets_the_slots() -> None:
    s = load_settings(lookup_from({}), parallelism=4)
    assert (s.prefetch_multiplier, s.prefetch, s.slots) == (4, 12, 16)  # Celery's default multiplier
    s = load_settings(lookup_from({("forklift", "prefetch_multiplier"): "1"}), parallelism=4)
    assert (s.prefetch, s.slots) == (0, 4)  # strict: a slot is a running task
    assert load_settings(lookup_from({}), parallelism=0).prefetch == 0  # unlimited holds nothing back


@pytest.mark.parametrize("raw", ["0", "-1", "x", "", "1001"])
def test_bad_prefetch_multiplier(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"\[forklift\] prefetch_multiplier .*AIRFLOW__FORKLIFT__PREFETCH_MULTIPLIER"):
        load_settings(lookup_from({("forklift", "prefetch_multiplier"): raw}), parallelism=1)


def test_preload_modules() -> None:
    s = load_settings(lookup_from({("forklift", "preload_modules"): " pandas, my_co.operators ,"}), parallelism=1)
    assert s.preload_modules == ("pandas", "my_co.operators")
    with pytest.raises(ConfigError, match=r"\[forklift\] preload_modules .*'my-co.ops'.* is not a module name"):
        load_settings(lookup_from({("forklift", "preload_modules"): "pandas, my-co.ops"}), parallelism=1)


def test_handover_defaults_adopt_and_follow_airflows_orphan_check() -> None:
    from forklift.settings import OnShutdown

    s = load_settings(lookup_from({}), parallelism=2)
    assert s.on_shutdown is OnShutdown.ADOPT and s.records_dir is None
    assert s.orphan_timeout == 630.0  # 30 s threshold + 2 x 300 s orphan check, Airflow's defaults
    prompt = load_settings(
        lookup_from(
            {
                ("scheduler", "scheduler_health_check_threshold"): "60",
                ("scheduler", "orphaned_tasks_check_interval"): "600",
            }
        ),
        parallelism=2,
    )
    assert prompt.orphan_timeout == 1260.0
    short = load_settings(lookup_from({("scheduler", "orphaned_tasks_check_interval"): "2"}), parallelism=2)
    assert short.orphan_timeout == 120.0, "never below two minutes by default: room for a restart"
    explicit = load_settings(
        lookup_from(
            {
                ("forklift", "orphan_timeout"): "0",
                ("forklift", "on_shutdown"): " Stop ",
                ("forklift", "records_dir"): "/srv/forklift",
            }
        ),
        parallelism=2,
    )
    assert (explicit.orphan_timeout, explicit.on_shutdown, explicit.records_dir) == (
        0.0,
        OnShutdown.STOP,
        "/srv/forklift",
    )


@pytest.mark.parametrize(
    ("key", "raw", "fragment"),
    [
        ("on_shutdown", "kill", "[forklift] on_shutdown (env AIRFLOW__FORKLIFT__ON_SHUTDOWN) = 'kill' is not a choice"),
        (
            "orphan_timeout",
            "-5",
            "[forklift] orphan_timeout (env AIRFLOW__FORKLIFT__ORPHAN_TIMEOUT) = '-5' is out of range",
        ),
        ("orphan_timeout", "nan", "'nan' is out of range"),
        ("orphan_timeout", "soon", "'soon' is not a number of seconds"),
    ],
)
def test_bad_handover_settings_are_refused(key: str, raw: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(lookup_from({("forklift", key): raw}), parallelism=2)
    assert fragment in str(info.value)


def test_memory_settings_and_the_per_task_override() -> None:
    from forklift.settings import task_memory_limit

    s = load_settings(lookup_from({}), parallelism=2)
    assert (s.task_memory_limit, s.task_oom_score_adj) == (0, 500)
    s = load_settings(
        lookup_from({("forklift", "task_memory_limit"): "2048", ("forklift", "task_oom_score_adj"): "0"}), parallelism=2
    )
    assert (s.task_memory_limit, s.task_oom_score_adj) == (2048, 0)
    assert task_memory_limit(None, 512) == 512
    assert task_memory_limit({"pod_override": object()}, 512) == 512  # another executor's settings
    assert task_memory_limit({"forklift": {"memory_limit_mb": 4096}}, 512) == 4096
    assert task_memory_limit({"forklift": {"memory_limit_mb": 0}}, 512) == 0  # this task: no limit
    for bad in ({"forklift": {"memory_limit_mb": "2G"}}, {"forklift": {"memory_limit_mb": -1}}, {"forklift": 7}):
        with pytest.raises(ConfigError, match=r"executor_config\['forklift'\]"):
            task_memory_limit(bad, 512)


@pytest.mark.parametrize(
    ("key", "raw", "fragment"),
    [
        (
            "task_memory_limit",
            "-1",
            "[forklift] task_memory_limit (env AIRFLOW__FORKLIFT__TASK_MEMORY_LIMIT) = -1 is out of range",
        ),
        ("task_memory_limit", "2G", "'2G' is not a whole number"),
        (
            "task_oom_score_adj",
            "-500",
            "[forklift] task_oom_score_adj (env AIRFLOW__FORKLIFT__TASK_OOM_SCORE_ADJ) = -500 is out of range",
        ),
        ("task_oom_score_adj", "1001", "1001 is out of range"),
    ],
)
def test_bad_memory_settings_are_refused(key: str, raw: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(lookup_from({("forklift", key): raw}), parallelism=2)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({("core", "parallelism"): "4"}, True),  # the defaults: forklift alone, workers = the cap
        ({("core", "parallelism"): "8", ("forklift", "parallelism"): "4"}, True),
        ({("core", "parallelism"): "4", ("forklift", "parallelism"): "8"}, False),  # more workers than the cap
        ({("core", "parallelism"): "4", ("core", "executor"): "LocalExecutor,forklift.LocalExecutor"}, False),
        ({("core", "parallelism"): "4", ("core", "executor"): "forklift.LocalExecutor;team_a=CeleryExecutor"}, False),
        ({("core", "parallelism"): "4", ("forklift", "prefetch_multiplier"): "1"}, False),  # nothing held ready
        ({("core", "parallelism"): "4", ("forklift", "parallelism"): "0"}, False),  # unlimited holds nothing
    ],
)
def test_held_ready_tasks_stay_uncounted_only_where_the_workers_alone_keep_the_cap(
    values: dict[tuple[str, str], str], expected: bool
) -> None:
    values = {("core", "executor"): "forklift.LocalExecutor", **values}

    def lookup(section: str, key: str) -> str | None:
        return values.get((section, key))

    assert holds_ready_beyond_cap(load_settings(lookup), lookup) is expected


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ("forklift.LocalExecutor", ["forklift.LocalExecutor"]),
        ("LocalExecutor, fl:forklift.LocalExecutor", ["LocalExecutor", "forklift.LocalExecutor"]),
        ("forklift.LocalExecutor;team_a=CeleryExecutor", ["forklift.LocalExecutor", "CeleryExecutor"]),
        ("", []),
    ],
)
def test_executor_names(raw: str, names: list[str]) -> None:
    assert executor_names(raw) == names

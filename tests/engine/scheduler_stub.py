"""A stand-in scheduler for the handover tests: owns one engine, starts one job, says so, then
either waits to be killed or ends leaving its running work behind.

    python scheduler_stub.py SPEC_JSON

SPEC_JSON: {"records": dir, "parallelism": 0|N, "mode": "fork"|"subprocess", "key": str,
"out": file the task appends "<key> <pid> <start> <end>" to, "seconds": task length,
"orphan_timeout": s, "then": "wait" | "end", "secret": str written to a subprocess task's stdin,
"held": [keys of quick jobs submitted after the first, held ready behind it]}
Prints one JSON line once the task runs: {"task_pid": ..., "worker_pid": ...}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from forklift.handover import RecordsDir
from forklift.jobs import RUNNING, Command, ForkCall, Job
from forklift.strategies import EngineOptions, make_strategy

import jobfns

TASK = (
    "import os, sys, time; start = time.time(); sys.stdin.read(); time.sleep(float(sys.argv[2])); "
    "open(sys.argv[1], 'a').write(f'{sys.argv[3]} {os.getpid()} {start} {time.time()}\\n')"
)


def main() -> None:
    spec = json.loads(sys.argv[1])
    engine = make_strategy(
        spec["parallelism"],
        EngineOptions(
            kill_grace=1.0,
            prefetch=4,  # LimitedParallelism: jobs beyond the workers wait on the task queue, held ready
            records=RecordsDir(spec["records"]).ensure(),
            orphan_timeout=spec.get("orphan_timeout", 600.0),
        ),
    )
    engine.start()
    if spec.get("key"):
        if spec["mode"] == "fork":
            runnable = ForkCall(jobfns.timed, (spec["out"], spec["key"], spec["seconds"]))
        else:
            runnable = Command(
                [sys.executable, "-c", TASK, spec["out"], str(spec["seconds"]), spec["key"]],
                secret_input=spec.get("secret", "").encode(),
            )
        engine.submit(Job(spec["key"], runnable, title=spec["key"]))
        for key in spec.get("held", []):
            engine.submit(Job(key, ForkCall(jobfns.timed, (spec["out"], key, 0)), title=key))
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the job never started"
            started = [r for r in engine.poll(timeout=0.2) if r.state == RUNNING and r.key == spec["key"]]
            if started:
                print(json.dumps({"task_pid": started[0].task_pid, "worker_pid": started[0].worker_pid}), flush=True)
                break
    else:
        print(json.dumps({"workers": engine.worker_pids()}), flush=True)
    if spec["then"] == "end":
        engine.end(0.2, leave_running=True)
        return
    while True:  # until killed
        time.sleep(60)


if __name__ == "__main__":
    main()

"""Servers a test starts die with the test process, however it dies.

A test session killed from outside (a CI job's timeout, ``kill -9`` of pytest, a closed terminal)
runs no fixture teardown. Without a tie, what it started lives on: schedulers still running
tasks, api-servers, databases, all competing for the CPU of whatever runs next on the machine.
:func:`tied` prefixes a command with a small launcher that asks the kernel (Linux
``PR_SET_PDEATHSIG``) to send the process SIGTERM when its parent dies, then becomes the command
(``exec``: same pid, so stopping it by pid still stops exactly it). The tie survives the exec.

Only the process started is tied, not its children: a scheduler that gets the SIGTERM shuts down as
it does for an operator, with its own rules for its tasks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# A fresh interpreter (-I: no site, no user env) that ties itself to its parent, checks that the
# parent did not die before the tie was made (it would then never get the signal), and execs.
# SIGTERM (15) lets each server stop as it would for an operator; PR_SET_PDEATHSIG is 1.
_LAUNCHER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, 15, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def tied(argv: Sequence[str]) -> list[str]:
    """``argv`` to start with ``subprocess.Popen`` from this process so that it gets SIGTERM when this
    process dies. The tie is to the calling *thread* (the kernel's rule): call from the main thread,
    or one that outlives the process started. Elsewhere than on Linux, ``argv`` unchanged."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-c", _LAUNCHER, str(os.getpid()), *argv]

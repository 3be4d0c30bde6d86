"""Tie a process's life to its parent's: when the parent dies, so does it (Linux), promptly.

Linux's ``PR_SET_PDEATHSIG`` delivers a signal when the parent exits, however it exits (SIGKILL
included). Elsewhere a process has to notice for itself, so :func:`parent_is_gone` is there too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` when our parent dies; True if it could. Exits at once if the
    parent is already gone (it may have died before the request was made)."""
    expected_parent = os.getppid()
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            ok = libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        except (OSError, AttributeError):
            ok = False
    if expected_parent == 1 or parent_is_gone(expected_parent):
        os._exit(1)
    return ok


def parent_is_gone(expected_parent: int) -> bool:
    return os.getppid() != expected_parent

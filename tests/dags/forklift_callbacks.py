"""Callbacks the test deployments call by import path (3.2 runs an executor callback by importing it,
so it must live in a module of its own, not in the file that defines the workflow using it)."""

from __future__ import annotations

import os


def deadline_missed(path: str, **_: object) -> None:
    with open(path, "a") as f:
        f.write(f"deadline callback ran in pid {os.getpid()}\n")

"""Process titles, so ``ps`` shows which forklift process is which (never a secret in them)."""

from __future__ import annotations

import sys
from collections.abc import Callable

_setproctitle: Callable[[str], None] | None
try:
    import setproctitle

    _setproctitle = setproctitle.setproctitle
except ImportError:  # pragma: no cover - setproctitle comes with Airflow
    _setproctitle = None


def set_title(title: str) -> None:
    # macOS crashes in setproctitle on the child side of a fork (Airflow skips it there too).
    if _setproctitle is not None and sys.platform != "darwin":
        _setproctitle(title)

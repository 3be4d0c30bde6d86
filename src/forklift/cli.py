"""The ``forklift`` command: ``forklift doctor`` and ``forklift --version``."""

from __future__ import annotations

import argparse
import sys

from forklift import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forklift", description="forklift: an Airflow-compatible LocalExecutor.")
    parser.add_argument("--version", action="version", version=f"forklift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "doctor",
        help="check this deployment (executor setting, parallelism, start method, DB, execution API, PATH)",
        description="Check this deployment line by line; exit 1 when something is wrong.",
    )
    args = parser.parse_args(argv)
    if args.command != "doctor":
        parser.print_help()
        return 2
    from forklift.doctor import FAIL, WARN, run_checks

    checks = run_checks()
    for check in checks:
        print(check.line())
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    print(f"\n{failed} problem(s), {warned} warning(s)" if failed or warned else "\nall good")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""MkDocs hook: the configuration reference is generated from forklift's provider declaration.

``docs/configuration.md`` holds the marker below; at build time it is replaced by a table made from
``forklift.provider_info.CONFIG_OPTIONS``, the same declaration ``airflow config list`` reads, so the
two cannot drift.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- forklift-config-reference -->"


def _table() -> str:
    from forklift.provider_info import CONFIG_OPTIONS

    rows = ["| key | type | default | example | what it does |", "|---|---|---|---|---|"]
    for key, option in CONFIG_OPTIONS.items():
        default = (
            "(unset)"
            if option["default"] is None
            else f"`{option['default']}`"
            if option["default"] != ""
            else "(empty)"
        )
        env = f"AIRFLOW__FORKLIFT__{key.upper()}"
        rows.append(
            f"| `{key}`<br>`{env}` | {option['type']} | {default} | `{option['example']}` | {option['description']} |"
        )
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, _table())
    return markdown

"""mkdocs hooks: the site's list of spec kinds comes from the table of built-in kinds.

The "Spec kinds" section of the navigation and the kinds in reference.md (where
the page has the marker below) are made from `handles._kinds.BUILTIN`, so adding
a built-in kind needs no edit here or in mkdocs.yml: its page and its table line.
"""

from __future__ import annotations

from typing import Any

from handles._kinds import BUILTIN

MARKER = "<!-- built-in kinds: one entry per line of handles._kinds.BUILTIN -->"
SECTION = "Spec kinds"


def kinds_nav() -> list[dict[str, str]]:
    """The navigation entries: one page per built-in kind, in the table's order."""
    return [{info.class_name: f"kinds/{info.page}"} for info in BUILTIN.values() if info.page]


def kinds_reference() -> str:
    """The reference entries that replace MARKER: one `::: handles.Class` per kind."""
    return "\n\n".join(f"::: handles.{info.class_name}" for info in BUILTIN.values())


def on_config(config: Any) -> Any:
    for item in config["nav"]:
        if isinstance(item, dict) and SECTION in item:
            item[SECTION] = kinds_nav()
    return config


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return markdown.replace(MARKER, kinds_reference())

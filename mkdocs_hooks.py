"""mkdocs hooks: the site's list of spec kinds comes from the table of built-in kinds.

The "Spec kinds" section of the navigation and the kinds in reference.md (where
the page has the marker below) are made from `handles._kinds.BUILTIN`, so adding
a built-in kind needs no edit here or in mkdocs.yml: its page and its table line.
"""

from __future__ import annotations

import importlib
from typing import Any

from handles._kinds import BUILTIN
from handles._spec import Spec

MARKER = "<!-- built-in kinds: one entry per line of handles._kinds.BUILTIN -->"
SECTION = "Spec kinds"


def kinds_nav() -> list[dict[str, str]]:
    """The navigation entries: one page per built-in kind, in the table's order."""
    return [{info.class_name: f"kinds/{info.page}"} for info in BUILTIN.values() if info.page]


def kinds_reference() -> str:
    """The reference entries that replace MARKER: one `::: handles.Class` per kind."""
    return "\n\n".join(_entry(info.class_name, info.module) for info in BUILTIN.values())


def _entry(class_name: str, module: str) -> str:
    # A kind's fields and methods may live in a private base it shares with another
    # kind (DatabaseSpec and AsyncDatabaseSpec): show those as the kind's own.
    shared = _from_private_bases(getattr(importlib.import_module(module), class_name))
    if not shared:
        return f"::: handles.{class_name}"
    listed = ", ".join(shared)
    return f"::: handles.{class_name}\n    options:\n      inherited_members: [{listed}]"


def _from_private_bases(cls: type) -> list[str]:
    names: set[str] = set()
    for base in cls.__mro__[1:]:
        if base.__name__.startswith("_") and base.__module__.startswith("handles.specs."):
            names |= set(vars(base)) | set(vars(base).get("__annotations__", {}))
    # The base's class variables (identity_fields, ...) are set per class: not members.
    own = set(vars(Spec).get("__annotations__", {}))
    return sorted(n for n in names - own if not n.startswith(("_", "model_")))


def on_config(config: Any) -> Any:
    for item in config["nav"]:
        if isinstance(item, dict) and SECTION in item:
            item[SECTION] = kinds_nav()
    return config


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return markdown.replace(MARKER, kinds_reference())

"""A kind of our own for examples/prefect_engines.py, in a module every worker imports by name.

A kind defined in the script itself would be defined twice in a spawned worker
(once as the script's module, once unpickled by value) under one kind name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from handles import Identity, Placement, Spec


class Names:
    """The live object: names to look for (a stand-in for a model)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def find(self, text: str) -> list[str]:
        return [name for name in self.names if name in text]


class NamesSpec(Spec[Names]):
    """Names read from a file; every build and teardown is noted in `journal`, for this demo."""

    kind: Literal["example-names"] = "example-names"
    path: Annotated[str, Identity]
    journal: Annotated[str, Placement]

    def build(self) -> Names:
        self._note("built")
        return Names(Path(self.path).read_text(encoding="utf-8").splitlines())

    def teardown(self, value: Names) -> None:
        self._note("closed")

    def _note(self, event: str) -> None:
        with open(self.journal, "a", encoding="utf-8") as out:
            out.write(f"{event} {os.getpid()}\n")

"""Kinds that leave a file for each build and each teardown, in whatever process runs them.

A worker process's registry cannot be read from the test, and a worker killed
without notice leaves no trace; a marker file on disk is proof that the build or
the teardown really ran there. Each file is named
`{built|closed}-{name}-{pid}-{thread id}` inside the spec's `folder`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from handles import Identity, Scope, Spec


class Marked:
    """The live object: knows where it was built."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = os.getpid()
        self.thread = threading.get_ident()


class MarkerSpec(Spec[Marked]):
    kind: Literal["test-marker"] = "test-marker"

    folder: Annotated[str, Identity]
    name: Annotated[str, Identity]

    def build(self) -> Marked:
        self._mark("built")
        return Marked(self.name)

    def teardown(self, value: Marked) -> None:
        self._mark("closed")

    def _mark(self, event: str) -> None:
        path = Path(self.folder) / f"{event}-{self.name}-{os.getpid()}-{threading.get_ident()}"
        path.touch(exist_ok=False)  # a second build or teardown in one thread fails loudly


class ThreadMarkerSpec(MarkerSpec):
    kind: Literal["test-thread-marker"] = "test-thread-marker"  # type: ignore[assignment]
    scope: ClassVar[Scope] = "thread"


def markers(folder: str | Path, event: str, name: str) -> list[tuple[int, int]]:
    """(pid, thread id) of every `event` ("built" or "closed") of the spec named `name`."""
    found = []
    for path in Path(folder).glob(f"{event}-{name}-*"):
        pid, thread = path.name.rsplit("-", 2)[1:]
        found.append((int(pid), int(thread)))
    return sorted(found)


def note_start(folder: str) -> None:
    """A worker initializer or setup hook of the user's own: marks that it ran, and where."""
    (Path(folder) / f"started-{os.getpid()}").touch()


def note_start_from_env() -> None:
    """`note_start` as a Ray setup hook, which takes no arguments: the folder comes by env."""
    note_start(os.environ["HANDLES_TEST_MARKERS"])


def started(folder: str | Path) -> list[int]:
    """The pids that ran `note_start`."""
    return sorted(int(p.name.split("-")[1]) for p in Path(folder).glob("started-*"))


def task_pid(*specs: MarkerSpec) -> int:
    """A task body: refuses to run unless every spec is built here already; returns the pid."""
    import handles

    missing = [spec.name for spec in specs if spec not in handles.registry()]
    assert not missing, f"not built before the task: {missing}"
    return os.getpid()

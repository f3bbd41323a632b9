"""A small in-repo spec kind for the core's tests: a named resource that counts itself.

`fail_if_exists` lets a test make builds fail and then succeed again by creating
and removing a real file, with no hidden state.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from handles import Identity, Placement, Scope, Spec

CLOSED: list[str] = []  # teardown order, for tests in this process


class Resource:
    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = os.getpid()
        self.thread = threading.get_ident()
        self.closed = False

    def ping(self) -> str:
        if self.closed:
            raise RuntimeError(f"resource {self.name} is closed")
        return self.name

    def close(self) -> None:
        self.closed = True
        CLOSED.append(self.name)


class EchoSpec(Spec[Resource]):
    kind: Literal["test-echo"] = "test-echo"

    name: Annotated[str, Identity]
    version: Annotated[int, Identity] = 1
    delay: Annotated[float, Placement] = 0.0
    fail_if_exists: Annotated[str | None, Placement] = None

    def build(self) -> Resource:
        if self.delay:
            time.sleep(self.delay)
        if self.fail_if_exists and Path(self.fail_if_exists).exists():
            raise OSError(f"refusing to build while {self.fail_if_exists} exists")
        return Resource(self.name)


class ThreadEchoSpec(EchoSpec):
    kind: Literal["test-thread-echo"] = "test-thread-echo"  # type: ignore[assignment]
    scope: ClassVar[Scope] = "thread"

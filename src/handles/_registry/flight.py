"""Single-flight: one build per key at a time, every other caller waits for its outcome.

One machine for threads and coroutines. A `Flight` holds a
`concurrent.futures.Future`: threads wait on it directly, coroutines through
`asyncio.wrap_future` (never blocking their loop). The future is marked running
from the start, so a waiter that is cancelled (a task timeout) cancels only its
own wait, never the build. Every waiter of a failed build gets its own copy of
the builder's error, of the same type: a MissingDependencyError stays one.

A build that asks for its own key (a kind whose build calls its own `get()`)
would wait for itself forever; the flight knows its owner (the thread, or the
asyncio task) and refuses at once instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import threading
from typing import TYPE_CHECKING, Any

from handles.exceptions import BuildError

if TYPE_CHECKING:
    from handles._registry.entries import Entry
    from handles._spec import Spec

__all__ = ["Flight", "owner_here"]


def owner_here() -> object:
    """Who is building: the running asyncio task, else the thread."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        task = None
    return task if task is not None else threading.get_ident()


class Flight:
    """A build in flight."""

    __slots__ = ("future", "owner")

    def __init__(self) -> None:
        self.owner = owner_here()
        self.future: concurrent.futures.Future[Entry | None] = concurrent.futures.Future()
        self.future.set_running_or_notify_cancel()

    def landed(self, entry: Entry) -> None:
        self.future.set_result(entry)

    def crashed(self, spec: Spec[Any], error: BaseException) -> None:
        """The build raised `error` (already ours: a BuildError, MissingDependencyError, ...)."""
        if isinstance(error, asyncio.CancelledError):
            # The builder's task was cancelled, not the build's cause: waiters try again.
            self.future.set_result(None)
            return
        if not isinstance(error, Exception):
            # KeyboardInterrupt and the like stopped the builder, not its waiters.
            wrapped = BuildError.for_spec(spec, error)
            wrapped.__cause__ = error
            error = wrapped
        self.future.set_exception(error)

    def wait(self, spec: Spec[Any]) -> Entry | None:
        """The built entry, or None when the builder gave up (cancelled): ask again."""
        self._refuse_recursion(spec)
        try:
            return self.future.result()
        except BaseException as exc:
            raise _again(exc) from exc.__cause__

    async def await_(self, spec: Spec[Any]) -> Entry | None:
        self._refuse_recursion(spec)
        try:
            return await asyncio.wrap_future(self.future)
        except asyncio.CancelledError:
            raise  # this waiter was cancelled; the build goes on
        except BaseException as exc:
            raise _again(exc) from exc.__cause__

    def _refuse_recursion(self, spec: Spec[Any]) -> None:
        if self.owner == owner_here():
            raise BuildError.about(
                spec,
                f"{spec!r} asked for itself while being built (a build that calls its own get())",
            )


def _again(error: BaseException) -> BaseException:
    """A fresh copy of `error` for one waiter, so threads never share one traceback."""
    again = getattr(error, "again", None)
    if callable(again):
        fresh = again()
        if isinstance(fresh, BaseException):
            return fresh
    fresh = copy.copy(error)
    fresh.__traceback__ = None
    return fresh

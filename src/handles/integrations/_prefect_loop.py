"""One long-lived event loop per Prefect worker, for its async task runs: every private-API use.

Prefect runs each async task run with its own `asyncio.run()`, so a loop-scoped
object (an AsyncEngine, an async filesystem) lives exactly one task run. A bound
runner (`bind_to_workers`) gives each worker one `asyncio.Runner` instead,
created as the worker starts and closed as it stops: its async task runs go to
`runner.run()`, which is what `asyncio.run()` does minus making and closing a
loop each time. Closing the runner cancels what task runs left running, closes
async generators (the registry's loop keeper among them: every loop-scoped
object's `ateardown()` runs there) and the loop's default executor, as
`asyncio.run()` would have at the end of each run.

What this relies on, read in Prefect 3.8.8 and 3.9.1 (prefect/task_runners.py):

1. `ThreadPoolTaskRunner.__enter__` makes its executor in `_executor` (threads
   start lazily, on the first submit), and `submit()` hands it an async task run
   as `_executor.submit(context.run, asyncio.run, run_task_async(...))`, a sync
   one as `_executor.submit(context.run, run_task_sync, **kwargs)`; `cancel_all()`
   and `__exit__` call `_executor.shutdown(cancel_futures=True)`. Pool threads
   are registered through `_register_worker_thread()` for its nested-submit
   warning. Its pool size is `_max_workers`.
2. In a `ProcessPoolTaskRunner` worker, Prefect's task function runs an async
   task run as `asyncio.run(run_task_async(...))` in the worker's main thread,
   the thread of the worker initializer.
3. `prefect.task_engine.run_task_async` is a plain coroutine function.

Should Prefect change 1, a warning says (once per runner) that async task runs
got a loop each; should it change 2 or 3, they do so silently. Either way Prefect
runs them as it would without handles. tests/prefect/test_prefect_async_loop.py
checks all three on every Prefect version CI installs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Executor, Future
from typing import Any

from handles._spec import Spec
from handles.exceptions import HandlesError
from handles.integrations._warm import release, warm

__all__ = ["WorkerLoopPool", "adopt_pool", "start_process_loop"]

logger = logging.getLogger("handles")

_threads = threading.local()  # .runner: the asyncio.Runner this thread's task runs use


# -- thread pools -------------------------------------------------------------------


def adopt_pool(runner: Any, specs: tuple[Spec[Any], ...]) -> WorkerLoopPool:
    """Put a WorkerLoopPool in place of a started ThreadPoolTaskRunner's executor.

    `specs`: thread- and loop-scoped specs each pool thread builds as it starts.
    """
    plain = runner._executor  # made by Prefect's __enter__, no thread started yet
    pool = WorkerLoopPool(
        runner._max_workers, getattr(runner, "_register_worker_thread", None), specs
    )
    runner._executor = pool
    plain.shutdown(wait=False)
    return pool


class WorkerLoopPool(Executor):
    """A thread pool whose every thread owns one event loop for its whole life.

    Threads start as work arrives (up to `max_workers`, as ThreadPoolExecutor
    does). Each makes its `asyncio.Runner` and builds `specs` (thread-scoped ones
    in the thread, loop-scoped ones on its loop) before taking work; Prefect's
    async task runs go to that runner; everything else runs as submitted. At
    shutdown each thread closes its specs and its loop itself.
    """

    def __init__(
        self,
        max_workers: int,
        on_start: Callable[[], object] | None = None,
        specs: tuple[Spec[Any], ...] = (),
    ) -> None:
        self.max_workers = max_workers
        self.on_start = on_start
        self.specs = specs
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], Any, Any] | None]
        self._work = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._shared = threading.local()  # .last: whether this thread's last submit was a loop's

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self._shared.last = _task_run(fn, args, kwargs) is not None
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[Any] = Future()
            self._work.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._serve, name=f"handles-worker-loop-{next(_numbers)}"
                )
                thread.start()
                self._threads.append(thread)
        return future

    def last_submit_shared(self) -> bool:
        """Whether this thread's last submit was an async task run for a worker's loop."""
        return bool(getattr(self._shared, "last", False))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._work.put(None)
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _serve(self) -> None:
        local = [spec for spec in self.specs if spec.scope == "thread"]
        with asyncio.Runner() as runner:
            _threads.runner = runner
            runner.get_loop()  # the loop exists from the worker's start
            try:
                # A worker that cannot start its specs still serves: its tasks
                # retry the builds and raise where they can be seen.
                if self.on_start is not None:
                    self.on_start()
                warm(local)
                runner.run(awarm(spec for spec in self.specs if spec.scope == "loop"))
            except Exception:
                logger.exception("starting a worker thread's specs failed")
            try:
                while (item := self._work.get()) is not None:
                    self._run(runner, *item)
                    del item
                    self._idle.release()
            finally:
                _threads.runner = None
                release(local)
        # Leaving the block closed the runner: leftover tasks cancelled, async
        # generators closed (the loop's objects torn down on it), loop closed.

    @staticmethod
    def _run(
        runner: asyncio.Runner, future: Future[Any], fn: Callable[..., Any], args: Any, kwargs: Any
    ) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            coro = _task_run(fn, args, kwargs)
            result = fn(*args, **kwargs) if coro is None else fn(_run_on, runner, coro)
        except BaseException as exc:  # as ThreadPoolExecutor: the future carries it
            future.set_exception(exc)
        else:
            future.set_result(result)


_numbers = itertools.count()


def _task_run(fn: Callable[..., Any], args: Any, kwargs: Any) -> Coroutine[Any, Any, Any] | None:
    """The coroutine, if this is Prefect's `submit(context.run, asyncio.run, coro)` call."""
    if kwargs or len(args) != 2 or args[0] is not asyncio.run:
        return None
    if not isinstance(getattr(fn, "__self__", None), contextvars.Context):
        return None
    return args[1] if asyncio.iscoroutine(args[1]) else None


def _run_on(runner: asyncio.Runner, coro: Coroutine[Any, Any, Any]) -> Any:
    # Called inside Prefect's context.run: the task gets a copy of that context,
    # as asyncio.run gives it (a Runner would otherwise reuse the one it made).
    return runner.run(coro, context=contextvars.copy_context())


async def awarm(specs: Iterable[Spec[Any]]) -> int:
    """Build each loop-scoped spec on the running loop; log and skip failures (see `warm`)."""
    ready = 0
    for spec in specs:
        try:
            await spec.aget()
        except HandlesError as exc:
            logger.warning("warm-up of %r failed; its tasks will retry the build: %s", spec, exc)
            continue
        ready += 1
    return ready


# -- process pools ------------------------------------------------------------------


def start_process_loop(specs: tuple[Spec[Any], ...]) -> None:
    """In a process-pool worker's main thread: its loop for every async task run, till exit.

    Builds the loop-scoped `specs` on it now; the loop is closed (and their
    `ateardown()` run on it) by an exit handler in this thread.
    """
    runner = asyncio.Runner()
    runner.get_loop()
    _threads.runner = runner
    _redirect_task_runs()
    runner.run(awarm(spec for spec in specs if spec.scope == "loop"))
    atexit.register(_close_process_loop, runner)


def _close_process_loop(runner: asyncio.Runner) -> None:
    _threads.runner = None
    try:
        runner.close()
    except Exception:  # an exiting worker must not fail on its loop
        logger.exception("closing this worker's event loop failed")


def _redirect_task_runs() -> None:
    """Make `asyncio.run(run_task_async(...))` use this thread's runner, in this process only.

    Prefect's process-pool worker calls asyncio.run itself (point 2 above); only
    that call, with that coroutine, on a thread that owns a runner, is sent to
    the runner. Every other call (a sync task's own asyncio.run) is untouched.
    """
    if getattr(asyncio.run, "_handles_original", None) is not None:
        return
    from prefect.task_engine import run_task_async  # noqa: PLC0415  (Prefect, point 3)

    original = asyncio.run
    task_run_code = run_task_async.__code__

    def run(main: Any, **kwargs: Any) -> Any:
        runner: asyncio.Runner | None = getattr(_threads, "runner", None)
        if (
            runner is not None
            and not kwargs
            and getattr(main, "cr_code", None) is task_run_code
            and not _loop_running()
        ):
            return runner.run(main, context=contextvars.copy_context())
        return original(main, **kwargs)

    run._handles_original = original  # type: ignore[attr-defined]
    asyncio.run = run


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

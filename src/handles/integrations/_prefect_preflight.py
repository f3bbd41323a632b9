"""The `preflight` decorator: a Prefect task whose arguments are checked before each call.

What is checked lives in `handles.integrations.preflight` (no Prefect needed);
this module decides, per call, which checks apply: whether the runner ships the
arguments, and which of them the task's cache policy hashes.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from prefect import Task
from prefect.cache_policies import CompoundCachePolicy, Inputs
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext, TaskRunContext
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from handles.integrations._prefect_cache import SpecInputs
from handles.integrations.preflight import Finding, Pickler, PreflightError, check_value

__all__ = ["MODES", "PreflightTask", "preflight"]

logger = logging.getLogger("handles")

Mode = Literal["raise", "warn", "skip", "fallback"]
MODES = ("raise", "warn", "skip", "fallback")


def preflight(
    task: Any = None,
    /,
    *,
    mode: Mode = "raise",
    fallback: Any = None,
    pickler: Pickler = "cloudpickle",
) -> Any:
    """Check a task's arguments before each call, submit, map or delay.

    Use above `@task` (the check must run before Prefect takes the arguments)::

        @preflight(mode="warn")
        @task
        def count(conn): ...

    What is checked follows the call: `.submit`/`.map` on a process or Dask
    runner and `.delay` need picklable arguments; a thread pool or a direct
    call does not. Arguments the cache policy hashes (INPUTS, SPEC_INPUTS, not
    the excluded ones, not under NO_CACHE) must hash. Known live objects
    (connections, pipelines, modules, open files) are reported with the spec
    to use instead.

    mode: "raise" (PreflightError listing every problem), "warn" (log and go
        on), "skip" (log and return None), "fallback" (log and make the same
        call on `fallback`, a task or a plain function).
    """
    if mode not in MODES:
        raise ValueError(f"preflight mode must be one of {', '.join(MODES)}, got {mode!r}")
    if (mode == "fallback") != (fallback is not None):
        raise ValueError('preflight takes fallback= exactly when mode="fallback"')

    def wrap(task: Any) -> PreflightTask:
        return PreflightTask(task, mode=mode, fallback=fallback, pickler=pickler)

    return wrap(task) if task is not None else wrap


class PreflightTask:
    """A Prefect task whose calls are checked first; every other attribute is the task's.

    Serve or deploy `.task`, the wrapped task, where Prefect needs the task itself.
    """

    def __init__(self, task: Any, *, mode: Mode, fallback: Any, pickler: Pickler) -> None:
        if not isinstance(task, Task):
            raise TypeError(
                f"preflight wraps a Prefect task (put it above @task), got {type(task).__name__}"
            )
        self.task = task
        self.mode = mode
        self.fallback = fallback
        self.pickler = pickler
        functools.update_wrapper(self, task.fn)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this wrapper lacks. While unpickling, `task`
        # itself is not set yet: answering from it would recurse forever.
        if name == "task" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.task, name)

    def __repr__(self) -> str:
        return f"preflight({self.task!r}, mode={self.mode!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("__call__", args, kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("submit", args, kwargs)

    def map(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("map", args, kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("delay", args, kwargs)

    def check(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], how: str) -> list[Finding]:
        """The problems this call would hit: `how` is "__call__", "submit", "map" or "delay"."""
        transport = _ships_arguments(how)
        hashed, excluded = _hashed_inputs(self.task.cache_policy)
        ignore = _resolved_by_prefect()
        findings: list[Finding] = []
        for name, path, value in _named_arguments(self.task.fn, args, kwargs):
            findings += check_value(
                value,
                path,
                transport=transport,
                cache_key=hashed and name not in excluded,
                pickler=self.pickler,
                ignore=ignore,
                # Submitted tasks run on the runner's threads (or processes).
                other_thread=how in ("submit", "map"),
            )
        return findings

    def _run(self, how: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if how == "map":
            # Prefect's map lists every mapped iterator itself; listing it first
            # lets preflight check the items without draining what Prefect reads.
            args = tuple(_listed(value) for value in args)
            kwargs = {name: _listed(value) for name, value in kwargs.items()}
        findings = self.check(args, kwargs, how)
        if findings:
            error = PreflightError(f"task {self.task.name!r}", findings)
            if self.mode == "raise":
                raise error
            _warn(f"{error}\n(preflight mode={self.mode!r})")
            if self.mode == "skip":
                return None
            if self.mode == "fallback":
                target = getattr(self.fallback, how, None) if how != "__call__" else None
                return (target or self.fallback)(*args, **kwargs)
        return getattr(self.task, how)(*args, **kwargs)


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, Iterator) else value


def _ships_arguments(how: str) -> bool:
    # A direct call runs in this thread; submit/map ship through the runner;
    # delay stores the arguments (pickled) for a task worker.
    if how == "__call__":
        return False
    if how == "delay":
        return True
    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    return not isinstance(runner, ThreadPoolTaskRunner)


def _hashed_inputs(policy: Any) -> tuple[bool, set[str]]:
    """(does the policy hash the arguments, which names it leaves out)."""
    parts = policy.policies if isinstance(policy, CompoundCachePolicy) else [policy]
    input_parts = [p for p in parts if isinstance(p, Inputs | SpecInputs)]
    excluded = {name for p in input_parts for name in p.exclude}
    return bool(input_parts), excluded


def _resolved_by_prefect() -> tuple[type, ...]:
    # Futures and states are replaced by their results before the task runs.
    return (PrefectFuture, State)


def _named_arguments(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> list[tuple[str | None, str, Any]]:
    """(parameter name or None, path, value) for each argument as the call wrote it."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    star = next((p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    named: list[tuple[str | None, str, Any]] = []
    for index, value in enumerate(args):
        name = positional[index] if index < len(positional) else star
        named.append((name, f"args[{index}]", value))
    named += [(name, f"kwargs[{name!r}]", value) for name, value in kwargs.items()]
    return named


def _warn(message: str) -> None:
    if TaskRunContext.get() is not None or FlowRunContext.get() is not None:
        get_run_logger().warning(message)
    else:
        logger.warning(message)

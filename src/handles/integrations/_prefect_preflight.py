"""The `preflight` decorator: a Prefect task whose arguments are checked before each call.

What is checked lives in `handles.integrations.preflight` (no Prefect needed);
this module decides, per call, which checks apply: whether the runner ships the
arguments, and which of them the task's cache policy hashes.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from prefect import Task
from prefect.cache_policies import CompoundCachePolicy, Inputs
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext, TaskRunContext
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from handles.integrations._forgive import AsLive, can_resolve, lent_spec, resolving
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
    forgive: bool = True,
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
    forgive: in every mode, an argument that would be reported and is a live
        object this process's registry built (`db.get()` passed where `db`
        belongs) is sent as its spec instead, and the task receives its
        worker's own object (`spec.get()` where it runs); logged once per call
        site. Top-level arguments and mapped items only; other objects are
        reported as before. False: report them too.
    """
    if mode not in MODES:
        raise ValueError(f"preflight mode must be one of {', '.join(MODES)}, got {mode!r}")
    if (mode == "fallback") != (fallback is not None):
        raise ValueError('preflight takes fallback= exactly when mode="fallback"')

    def wrap(task: Any) -> PreflightTask:
        return PreflightTask(task, mode=mode, fallback=fallback, pickler=pickler, forgive=forgive)

    return wrap(task) if task is not None else wrap


class PreflightTask:
    """A Prefect task whose calls are checked first; every other attribute is the task's.

    Serve or deploy `.task`, the wrapped task, where Prefect needs the task itself.
    """

    def __init__(
        self, task: Any, *, mode: Mode, fallback: Any, pickler: Pickler, forgive: bool = True
    ) -> None:
        if not isinstance(task, Task):
            raise TypeError(
                f"preflight wraps a Prefect task (put it above @task), got {type(task).__name__}"
            )
        self.task = task
        self.mode = mode
        self.fallback = fallback
        self.pickler = pickler
        self.forgive = forgive and can_resolve(task.fn)
        functools.update_wrapper(self, task.fn)
        if self.forgive:
            # The task itself receives the live objects, wherever it runs: a task
            # worker serving `.task` too. Same signature, name and source: Prefect
            # binds, names and hashes it as before. Only AsLive arguments change.
            task.fn = resolving(task.fn)
            # Prefect keys a task by its function's code: copies (with_options, a
            # task worker's served task) are keyed by the wrapper's, so this one is too.
            task.task_key = task.with_options().task_key
        self._told: set[tuple[str, int]] = set()  # call sites already told of forgiveness

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
        if findings and self.forgive:
            args, kwargs = self._forgiven(args, kwargs, how, findings)
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

    def _forgiven(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], how: str, findings: list[Finding]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call with each reported live object the registry built replaced by AsLive."""
        told: list[str] = []

        def mend(value: Any, path: str) -> Any:
            if not any(_under(f.path, path) for f in findings):
                return value
            if how == "map" and type(value) in (list, tuple):
                return type(value)(mend(item, f"{path}[{i}]") for i, item in enumerate(value))
            if how == "map" and isinstance(value, unmapped):
                inner = mend(value.value, f"{path}.value")
                return value if inner is value.value else unmapped(inner)
            spec = lent_spec(value)
            if spec is None:
                return value
            told.append(f"{path}: {type(value).__name__} is the live object of {spec!r}")
            return AsLive(spec)

        args = tuple(mend(value, f"args[{i}]") for i, value in enumerate(args))
        kwargs = {name: mend(value, f"kwargs[{name!r}]") for name, value in kwargs.items()}
        caller = sys._getframe(3)  # _forgiven <- _run <- submit/map/... <- the caller
        site = (caller.f_code.co_filename, caller.f_lineno)
        if told and site not in self._told:
            self._told.add(site)
            _warn(
                f"task {self.task.name!r} was given live objects: "
                + "; ".join(told)
                + ". Sent as their specs: the task receives its worker's own objects "
                "(pass the specs to silence this)"
            )
        return args, kwargs


def _under(found: str, path: str) -> bool:
    """Is the finding at `found` inside the argument at `path`?"""
    return found == path or found.startswith((f"{path}.", f"{path}["))


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

"""Prefect integration: specs as task inputs under any task runner.

    from handles.integrations.prefect import SPEC_INPUTS, bind_to_workers, preflight

    @preflight                      # refuse live objects before submission
    @task(cache_policy=SPEC_INPUTS + TASK_SOURCE)
    def tag(nlp: SpacySpec, text: str) -> list[str]:
        return [ent.label_ for ent in nlp.get()(text).ents]

    @flow(task_runner=bind_to_workers(ProcessPoolTaskRunner(max_workers=2), NLP))
    def pipeline(texts: list[str]) -> None:
        tag.map(NLP, texts)         # every run gets NLP whole; built once per worker

- `SPEC_INPUTS`: a cache policy that keys a spec by its `cache_key()` (identity
  only) and every other input exactly as Prefect's INPUTS does, so moving a
  model from cpu to cuda keeps its cache. `SPEC_DEFAULT` is the spec-aware
  counterpart of Prefect's default policy.
- `bind_to_workers`: a task runner (threads, processes, Dask, Ray) whose workers
  build chosen specs as they start and close them as they stop.
- `warm_up`: a worker initializer that builds chosen specs before the first task.
- `route_registry_logs`: the registry's build and eviction lines in the run logs.
- `preflight`: checks a task's arguments before submission (see `.preflight`).
- `AnySpec`: a flow parameter type taking any kind of spec, or its JSON as a
  deployment sends it.

Never imported by `import handles`; importing this module imports Prefect.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeVar, cast

from pydantic import PlainValidator, SerializeAsAny, WithJsonSchema

from handles._kinds import spec_from_json
from handles._optional import require
from handles._spec import Spec
from handles.integrations._warm import checked, release, warm
from handles.integrations.preflight import (
    Finding,
    Pickler,
    PreflightError,
    check_inputs,
    check_value,
)

require("prefect", "prefect")

from prefect.cache_policies import (  # noqa: E402  (after the install hint)
    RUN_ID,
    TASK_SOURCE,
    CachePolicy,
    CompoundCachePolicy,
    Inputs,
)
from prefect.task_runners import (  # noqa: E402
    ProcessPoolTaskRunner,
    TaskRunner,
    ThreadPoolTaskRunner,
)

if TYPE_CHECKING:
    from prefect.context import TaskRunContext

__all__ = [
    "SPEC_DEFAULT",
    "SPEC_INPUTS",
    "AnySpec",
    "Finding",
    "PreflightError",
    "PreflightTask",
    "SpecInputs",
    "bind_to_workers",
    "check_inputs",
    "preflight",
    "route_registry_logs",
    "warm_up",
]

logger = logging.getLogger("handles")

# What a spec contributes to a cache key in place of its full dump.
SPEC_MARKER = "handles-spec"


# -- cache keys -----------------------------------------------------------------------


@dataclass
class SpecInputs(CachePolicy):
    """Like Prefect's INPUTS, but a spec is keyed by its `cache_key()`.

    Placement fields (device, pool size, timeouts) never move the key, and a
    secret reference is keyed by where the secret lives, never by its value.
    Specs inside plain lists, tuples and dicts are found too. Every other
    input is hashed by Prefect's own INPUTS policy, so a call without specs
    gets exactly the INPUTS key.

    Exclude an argument with `SPEC_INPUTS - "name"`, before composing: Prefect's
    compound policies only forward `-` to their own INPUTS.
    """

    exclude: list[str] = field(default_factory=list)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        keyed = {name: _keyed(value) for name, value in (inputs or {}).items()}
        inner = Inputs(exclude=list(self.exclude))
        key: str | None = inner.compute_key(
            task_ctx=task_ctx, inputs=keyed, flow_parameters=flow_parameters, **kwargs
        )
        return key

    def __sub__(self, other: str) -> SpecInputs:
        if not isinstance(other, str):
            raise TypeError("Can only subtract strings from key policies.")
        return replace(self, exclude=[*self.exclude, other])


def _keyed(value: Any) -> Any:
    """`value` with every spec replaced by its cache key; untouched when it holds none."""
    if isinstance(value, Spec):
        return {SPEC_MARKER: value.cache_key()}
    # Only exact builtin containers: rebuilding a subclass would change how
    # Prefect hashes it even when no spec is inside.
    if type(value) is dict:
        items = {k: _keyed(v) for k, v in value.items()}
        changed = any(items[k] is not v for k, v in value.items())
        return items if changed else value
    if type(value) in (list, tuple):
        parts = [_keyed(v) for v in value]
        changed = any(p is not v for p, v in zip(parts, value, strict=True))
        return type(value)(parts) if changed else value
    return value


SPEC_INPUTS = SpecInputs()
"""Inputs with specs keyed by `cache_key()`; compose with TASK_SOURCE, RUN_ID, `.configure()`."""

SPEC_DEFAULT = SPEC_INPUTS + TASK_SOURCE + RUN_ID
"""Prefect's default policy (INPUTS + TASK_SOURCE + RUN_ID) with spec-aware inputs."""


# -- flow parameters ------------------------------------------------------------------


def _as_spec(value: Any) -> Spec[Any]:
    # A deployment hands its parameters over as JSON: rebuild the spec its
    # `kind` names (only registered kinds, never an arbitrary import).
    if isinstance(value, Spec):
        return value
    if isinstance(value, str | bytes | Mapping):
        return spec_from_json(value)
    raise ValueError(f"expected a spec or its JSON, got {type(value).__name__}")


AnySpec = Annotated[
    SerializeAsAny[Spec[Any]],
    PlainValidator(_as_spec),
    WithJsonSchema(
        {
            "type": "object",
            "title": "Spec",
            "description": "Any handles spec, as its JSON; `kind` names which.",
            "properties": {"kind": {"type": "string", "title": "Kind"}},
            "required": ["kind"],
            "additionalProperties": True,
        }
    ),
]
"""A flow parameter that takes any kind of spec, or its JSON as a deployment sends it.

Annotate with a concrete kind (`db: SqliteSpec`) where the kind is fixed: its
schema then lists the fields. `Spec[Any]` itself accepts no JSON (the base
class knows no fields) and rejects instances of kinds under flow validation.
"""


# -- run logs -------------------------------------------------------------------------


class _RunLogHandler(logging.Handler):
    """Forwards records to the current Prefect run's logger; drops them outside a run."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.logging import get_run_logger

        if TaskRunContext.get() is None and FlowRunContext.get() is None:
            return  # warm-up and other work outside a run has no run log to join
        try:
            run_logger = get_run_logger()
            run_logger.log(record.levelno, "%s", record.getMessage(), exc_info=record.exc_info)
        except Exception:
            self.handleError(record)


def route_registry_logs(level: int = logging.INFO) -> None:
    """Send the registry's lines (builds, evictions, teardown failures) to Prefect's run logs.

    Call it once per process: in the flow's process for thread pools, and in
    each worker for process pools and Dask (`warm_up` and `SpecWarmUp` do). A
    line logged inside a task run is attached to that task run. Idempotent.
    """
    handles_logger = logging.getLogger("handles")
    if handles_logger.level == logging.NOTSET or handles_logger.level > level:
        handles_logger.setLevel(level)
    if not any(isinstance(h, _RunLogHandler) for h in handles_logger.handlers):
        handles_logger.addHandler(_RunLogHandler(level))


# -- warm-up and worker life ---------------------------------------------------------


def warm_up(*specs: Spec[Any]) -> None:
    """Build `specs` in this worker before its first task, and route registry logs.

    A worker initializer: `ProcessPoolTaskRunner(initializer=warm_up, initargs=(a, b))`.
    Process pool tasks run in the worker's main thread, the same thread as the
    initializer, so thread-scoped specs are warmed for them too. A failed build
    is logged and retried by the first task that needs it. `bind_to_workers`
    also closes them when the worker stops.
    """
    route_registry_logs()
    warm(specs)


RunnerT = TypeVar("RunnerT", bound=TaskRunner[Any])


def bind_to_workers(runner: RunnerT, *specs: Spec[Any]) -> RunnerT:
    """A copy of `runner` that builds `specs` as each worker starts and closes them as it stops.

        @flow(task_runner=bind_to_workers(ProcessPoolTaskRunner(max_workers=2), NLP, DB))

    - ThreadPoolTaskRunner: process-scoped specs are built once, in the flow's
      process, when the runner starts, and closed when it stops. Thread-scoped
      ones are built by each pool thread on first use and closed as the pool's
      threads end, when the runner stops.
    - ProcessPoolTaskRunner: every spec is built in each worker's main thread,
      where its tasks run (after your own initializer, if any), and closed when
      the worker exits.
    - DaskTaskRunner, on a cluster it creates: process-scoped specs are built as
      each worker starts and closed as it closes (the `SpecWarmUp` plugin);
      thread-scoped ones by each executor thread on first use. On a cluster of
      your own, register `SpecWarmUp` with the client instead.
    - RayTaskRunner, when it calls `ray.init`: every spec is built by Ray's
      worker setup hook in each worker's main thread, where its tasks run, and
      closed there when the runner stops (`handles.integrations.ray.WorkerSpecs`).

    A failed build is logged and retried by the first task that needs the spec.
    Registry lines go to the run logs in worker processes (in the flow's own
    process, call `route_registry_logs()` to have them there too). `runner`
    itself is unchanged; the copy keeps the binding when Prefect duplicates it
    for each flow run.
    """
    bound = checked(specs, "bind_to_workers")
    if isinstance(runner, BoundThreadPoolTaskRunner):
        return cast(RunnerT, runner.duplicate().bound_to((*runner.specs, *bound)))
    if type(runner) is ThreadPoolTaskRunner:
        # Prefect keeps the pool size private; its own duplicate() reads it too.
        fresh = BoundThreadPoolTaskRunner(max_workers=cast(Any, runner)._max_workers)
        return cast(RunnerT, fresh.bound_to(bound))
    if isinstance(runner, ProcessPoolTaskRunner):
        return cast(RunnerT, _bind_process_pool(runner, bound))
    dask = sys.modules.get("prefect_dask.task_runners")
    if dask is not None and isinstance(runner, dask.DaskTaskRunner):
        return cast(RunnerT, _bind_dask(runner, bound))
    ray = sys.modules.get("prefect_ray.task_runners")
    if ray is not None and isinstance(runner, ray.RayTaskRunner):
        from handles.integrations._prefect_ray import bind_ray

        return cast(RunnerT, bind_ray(runner, bound))
    raise TypeError(
        "bind_to_workers takes Prefect's ThreadPoolTaskRunner, ProcessPoolTaskRunner, "
        f"DaskTaskRunner or RayTaskRunner; got {type(runner).__name__}"
    )


class BoundThreadPoolTaskRunner(ThreadPoolTaskRunner[Any]):
    """A ThreadPoolTaskRunner from `bind_to_workers`: its specs live as long as it runs."""

    specs: tuple[Spec[Any], ...] = ()

    def bound_to(self, specs: tuple[Spec[Any], ...]) -> BoundThreadPoolTaskRunner:
        self.specs = specs
        return self

    def duplicate(self) -> BoundThreadPoolTaskRunner:
        return cast(BoundThreadPoolTaskRunner, super().duplicate()).bound_to(self.specs)

    def __enter__(self) -> Self:
        super().__enter__()
        warm(self._shared())  # here, in the flow's process: no logging is changed
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)  # waits for the pool's threads to end
        finally:
            release(self._shared())

    def _shared(self) -> list[Spec[Any]]:
        # Thread-scoped objects belong to the pool's threads, which build and
        # close their own: one built here would serve no task.
        return [spec for spec in self.specs if spec.scope == "process"]


def _bind_process_pool(runner: Any, specs: tuple[Spec[Any], ...]) -> Any:
    bound = runner.duplicate()
    # The worker initializer and its arguments: Prefect keeps them private, and
    # its duplicate() carries them to every flow run's copy of the runner.
    bound._initializer = _ProcessWorkerLife(
        specs, getattr(runner, "_initializer", None), getattr(runner, "_initargs", ())
    )
    bound._initargs = ()
    return bound


class _ProcessWorkerLife:
    """A process-pool worker initializer: your initializer, then the specs, closed at exit.

    Pickled into every worker by name (spawn), with the specs and your initializer.
    """

    def __init__(
        self,
        specs: tuple[Spec[Any], ...],
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self.specs = specs
        self.initializer = initializer
        self.initargs = tuple(initargs)

    def __call__(self) -> None:
        if self.initializer is not None:
            self.initializer(*self.initargs)
        route_registry_logs()
        warm(self.specs)
        # Tasks ran in this (main) thread, which also runs exit handlers: its
        # thread-scoped objects close here too. Registered after handles' own
        # handler, so it runs first.
        atexit.register(release, self.specs)


def _bind_dask(runner: Any, specs: tuple[Spec[Any], ...]) -> Any:
    from handles.integrations.dask import SpecWarmUp

    if runner.address or getattr(runner, "_cluster", None) is not None:
        raise ValueError(
            "bind_to_workers(DaskTaskRunner(...)) adds a worker plugin to the cluster the "
            "runner creates; on a cluster of your own, register it with the client: "
            "client.register_plugin(SpecWarmUp(...))"
        )
    bound = runner.duplicate()
    shared = [spec for spec in specs if spec.scope == "process"]
    if shared:
        plugin = SpecWarmUp(*shared, prefect_logs=True)
        plugins = bound.cluster_kwargs.get("plugins") or set()
        added = [*plugins, plugin] if isinstance(plugins, list | tuple) else {*plugins, plugin}
        bound.cluster_kwargs = {**bound.cluster_kwargs, "plugins": added}
    return bound


# -- preflight ------------------------------------------------------------------------

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
        from prefect import Task

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
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

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
    from prefect.client.schemas.objects import State
    from prefect.futures import PrefectFuture

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
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    if TaskRunContext.get() is not None or FlowRunContext.get() is not None:
        get_run_logger().warning(message)
    else:
        logger.warning(message)

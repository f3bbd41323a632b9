"""The machinery under handles.testing: failing well, getters, threads, loops, processes.

Private: `handles.testing` is the public face. Split from it to keep each module small.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

from handles._keys import canonical_json
from handles._registry import KeyStats, registry
from handles._spec import Spec
from handles.exceptions import BuildError, SpecError

T = TypeVar("T")

# The properties, as failures name them.
ONE_VALUE = "one value"
PICKLE = "pickle"
JSON = "JSON"
CANONICAL_DUMP = "canonical dump"
INPUT_ORDER = "input order"
CANONICAL_FINGERPRINT = "canonical fingerprint"
ROLES = "placement/identity roles"
KEY_STABILITY = "key stability across hash seeds"
REUSE = "reuse"
SINGLE_FLIGHT = "single-flight"
PER_LOOP = "one object per event loop"
FAILURE_NOT_CACHED = "failure not cached"
FORK = "fork"
TEARDOWN_ORDER = "teardown order"
Getter = Callable[[Spec[Any]], Any]

PREFIX = "contract broken: "
# Generous: a build may load a model; only a hang should ever reach it.
TIMEOUT = 120.0


# -- failing well -----------------------------------------------------------------


def fail(prop: str, detail: str, cause: BaseException | None = None) -> NoReturn:
    raise AssertionError(f"{PREFIX}{prop}: {detail}") from cause


def require(ok: bool, prop: str, detail: str) -> None:
    # Not `assert`: python -O strips those, and only test modules get pytest's rewriting.
    if not ok:
        fail(prop, detail)


@contextmanager
def property(prop: str) -> Iterator[None]:
    """Report any other error inside a check as that property broken, its cause chained."""
    try:
        yield
    except AssertionError as exc:
        if str(exc).startswith(PREFIX):
            raise
        fail(prop, f"AssertionError: {exc}", exc)
    except Exception as exc:
        fail(prop, f"{type(exc).__name__}: {exc}", exc)


def name(spec: Spec[Any]) -> str:
    return type(spec).__name__


def short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


# -- helpers ---------------------------------------------------------------------


@contextmanager
def getter(spec: Spec[Any]) -> Iterator[Getter]:
    """`s.get()`, or for loop scope `await s.aget()` on one event loop for the whole block.

    The loop runs in a thread of its own, so callers in any thread share it, as the
    coroutines of one application share their loop. Its shutdown closes its objects.
    """
    if spec.scope != "loop":
        yield lambda s: s.get()
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="handles-testing-loop", daemon=True)
    thread.start()
    try:
        yield lambda s: asyncio.run_coroutine_threadsafe(s.aget(), loop).result(TIMEOUT)
    finally:
        asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()


def forget(spec: Spec[Any]) -> None:
    # So counts start from no object. A loop-scoped check runs on a loop of its own: nothing there.
    if spec.scope != "loop":
        registry().evict(spec)


def stats(spec: Spec[Any]) -> KeyStats:
    # Stats outlive objects (and close()), so checks compare counts before and after.
    found = registry().stats().get(spec.cache_key())
    return found if found is not None else KeyStats(spec.kind, 0, 0, 0, 0.0, 0)


def delta(before: KeyStats, after: KeyStats) -> tuple[int, int]:
    """(builds, hits) between two stats of one key."""
    return after.builds - before.builds, after.hits - before.hits


def changed(spec: Spec[Any], name: str, value: Any) -> Spec[Any]:
    other = spec.replace(**{name: value})
    require(other != spec, ROLES, f"{name}={value!r} does not change the spec: pick another value")
    return other


def import_cloudpickle() -> Any:
    """The cloudpickle module, or None: it is optional, and only some checks use it."""
    try:
        import cloudpickle  # noqa: PLC0415  (optional)
    except ImportError:
        return None
    return cloudpickle


def in_threads(count: int, work: Callable[[], T], prop: str) -> list[T]:
    """`work()` in `count` threads released together; their results, in thread order."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(TIMEOUT)
            results[i] = work()
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        fail(prop, f"{len(errors)} of {count} threads failed, first with {errors[0]!r}", errors[0])
    return results


def get_twice(get: Getter, spec: Spec[Any]) -> Any:
    obj = get(spec)
    require(get(spec) is obj, SINGLE_FLIGHT, "a thread's second get() returned another object")
    return obj


def raised(get: Getter, spec: Spec[Any]) -> BaseException | None:
    try:
        get(spec)
    except Exception as exc:
        return exc
    return None


def build_error(get: Getter, broken: Spec[Any], attempt: int) -> BuildError:
    try:
        value = get(broken)
    except BuildError as exc:
        return exc
    fail(
        FAILURE_NOT_CACHED,
        f"get() #{attempt} of the broken spec returned a {type(value).__name__} instead of "
        "raising BuildError (a build that swallows its error, or remembers a placeholder?)",
    )


@contextmanager
def recording_teardowns(cls: type[Spec[Any]], closed: list[str]) -> Iterator[None]:
    """While the block runs, each teardown of a `cls` object appends its spec's cache key."""
    own = cls.__dict__.get("teardown")
    teardown = cls.teardown

    def recording(self: Spec[Any], value: Any) -> None:
        closed.append(self.cache_key())
        teardown(self, value)

    cls.teardown = recording  # type: ignore[method-assign]
    try:
        yield
    finally:
        if own is None:
            del cls.teardown
        else:
            cls.teardown = own  # type: ignore[method-assign]


# Set while a recorded ateardown runs, so the teardown() it calls (the default
# ateardown does) is not counted again; contextvars follow it into to_thread().
_IN_ATEARDOWN: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "handles_testing_in_ateardown", default=False
)


@contextmanager
def recording_loop_teardowns(
    cls: type[Spec[Any]], torn: list[tuple[Any, asyncio.AbstractEventLoop | None]]
) -> Iterator[None]:
    """While the block runs, each teardown of a `cls` object appends (object, its loop or None)."""
    own = {name: cls.__dict__.get(name) for name in ("ateardown", "teardown")}
    ateardown, teardown = cls.ateardown, cls.teardown

    async def recording_ateardown(self: Spec[Any], value: Any) -> None:
        torn.append((value, asyncio.get_running_loop()))
        token = _IN_ATEARDOWN.set(True)
        try:
            await ateardown(self, value)
        finally:
            _IN_ATEARDOWN.reset(token)

    def recording_teardown(self: Spec[Any], value: Any) -> None:
        if not _IN_ATEARDOWN.get():
            torn.append((value, running_loop()))
        teardown(self, value)

    cls.ateardown = recording_ateardown  # type: ignore[method-assign]
    cls.teardown = recording_teardown  # type: ignore[method-assign]
    try:
        yield
    finally:
        for name, method in own.items():
            if method is None:
                delattr(cls, name)
            else:
                setattr(cls, name, method)


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def on_two_loops(spec: Spec[Any]) -> list[tuple[Any, asyncio.AbstractEventLoop]]:
    """(object, loop) from `await spec.aget()` in two `asyncio.run()`s at once, in two threads."""
    both = threading.Barrier(2)
    got: list[Any] = [None, None]
    errors: list[BaseException] = []

    async def hold(i: int) -> None:
        obj = await spec.aget()
        require(
            await spec.aget() is obj, PER_LOOP, "a second aget() on one loop gave another object"
        )
        got[i] = (obj, asyncio.get_running_loop())
        both.wait(TIMEOUT)  # blocks this loop: both objects are held at once

    def run(i: int) -> None:
        try:
            asyncio.run(hold(i))
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)
            both.abort()

    threads = [
        threading.Thread(target=run, args=(i,), name=f"handles-testing-loop-{i}") for i in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real:
        if isinstance(real[0], AssertionError) and str(real[0]).startswith(PREFIX):
            raise real[0]
        fail(PER_LOOP, f"a loop failed: {real[0]!r}", real[0])
    return got


def reordered(spec: Spec[Any], reverse: bool) -> Spec[Any]:
    """`spec` validated again from its field values, dict keys and set items sorted or reversed.

    A set is handed over as a list in that order where the field takes one (a
    set handed over would be read in its own iteration order); as a set where
    a list would make another spec (an untyped field).
    """
    values = {name: getattr(spec, name) for name in type(spec).model_fields}
    try:
        listed = spec.replace(**{n: in_order(v, reverse, list) for n, v in values.items()})
    except SpecError:
        listed = None
    if listed is not None and listed == spec:
        return listed
    return spec.replace(**{n: in_order(v, reverse, None) for n, v in values.items()})


def in_order(value: Any, reverse: bool, sets_as: type[list[Any]] | None) -> Any:
    """`value` with every dict's keys and set's items (inside lists and tuples too) in one order."""
    if isinstance(value, dict):
        keys = sorted(value, key=str, reverse=reverse)
        return {k: in_order(value[k], reverse, sets_as) for k in keys}
    if isinstance(value, set | frozenset):
        items = sorted(value, key=canonical_json, reverse=reverse)
        if sets_as is not None:
            return sets_as(items)
        return (frozenset if isinstance(value, frozenset) else set)(items)
    if isinstance(value, list | tuple):
        items = [in_order(v, reverse, sets_as) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def unsorted_json_text(value: Any) -> None:
    """Fail if a string in `value` is JSON text of an object whose keys are out of order."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif isinstance(item, str) and item[:1] in ("{", "["):
            try:
                json.loads(item, object_pairs_hook=sorted_pairs)
            except UnsortedKeys as exc:
                fail(
                    CANONICAL_FINGERPRINT,
                    f"fingerprint() holds JSON text whose keys are not sorted ({exc}): "
                    "json.dumps(..., sort_keys=True), or return the data itself",
                )
            except ValueError:
                pass  # text that only looks like JSON


class UnsortedKeys(ValueError):
    pass


def sorted_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if keys != sorted(keys):
        raise UnsortedKeys(", ".join(keys))
    return dict(pairs)


def teardown_problem(closed: list[str], expected: list[str]) -> str:
    if sorted(closed) == sorted(expected):
        return "close() tore the older object down first (newest first expected)"
    # The registry defers a teardown while anything outside it holds the object.
    return (
        f"close() tore down {len(closed)} of the 2 objects: does something outside the "
        "registry still hold them?"
    )


# -- other processes ---------------------------------------------------------------

REBUILD = """\
import importlib, json, pickle, sys
import handles
job = pickle.loads(sys.stdin.buffer.read())
for name in job["modules"]:
    importlib.import_module(name)
if job["by_value"] is None:
    spec = handles.spec_from_json(job["json"])
else:
    spec = pickle.loads(job["by_value"]).model_validate_json(job["json"])
print(json.dumps([spec.cache_key(), spec.model_dump_json()]))
"""


def rebuild_job(spec: Spec[Any], setup_modules: Sequence[str]) -> bytes:
    """What a fresh process needs to rebuild `spec`: modules to import, the class if by value."""
    module = type(spec).__module__
    by_value = None
    if not importable(module):
        cloudpickle = import_cloudpickle()
        if cloudpickle is None:
            fail(
                KEY_STABILITY,
                f"no fresh process can import {module}, nor get it without cloudpickle",
            )
        by_value = pickled_by_value(cloudpickle, type(spec))
    modules = [*([module] if by_value is None else []), *setup_modules]
    return pickle.dumps({"modules": modules, "by_value": by_value, "json": spec.model_dump_json()})


def importable(module_name: str) -> bool:
    """Whether a fresh process can import `module_name` (not __main__, not exec'd code)."""
    module = sys.modules.get(module_name)
    return module_name != "__main__" and getattr(module, "__spec__", None) is not None


def pickled_by_value(cloudpickle: Any, cls: type) -> bytes:
    module = sys.modules[cls.__module__]
    registered = cls.__module__ in cloudpickle.list_registry_pickle_by_value()
    if not registered:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(cls)  # type: ignore[no-any-return]
    finally:
        if not registered:
            cloudpickle.unregister_pickle_by_value(module)


def rebuild_in_fresh_process(job: bytes, seed: str) -> list[str]:
    """[cache_key(), model_dump_json()] of the job's spec in `python` with PYTHONHASHSEED=seed."""
    # This process's import path, so kinds defined in a test's own modules import there.
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", REBUILD],
        input=job,
        env=env,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()[-2000:]
        fail(
            KEY_STABILITY, f"a fresh process (PYTHONHASHSEED={seed}) could not rebuild it:\n{error}"
        )
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def child_after_fork(spec: Spec[Any], parent_obj: Any) -> tuple[int, bool, int]:
    inherited = len(registry().stats())
    obj = spec.get()
    return inherited, obj is not parent_obj, registry().stats()[spec.cache_key()].builds


def run_in_fork(target: Callable[..., T], *args: Any, timeout: float = 60) -> T:
    """`target(*args)` in a child made by `os.fork`; its return value, pickled back.

    An error in the child comes back as AssertionError with the child's traceback.
    """
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:
        os.close(read_end)
        report_and_exit(write_end, target, args)
    os.close(write_end)
    try:
        data = read_until_closed(read_end, timeout)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"forked child sent nothing within {timeout} s") from None
    finally:
        os.close(read_end)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0 or not data:
        raise AssertionError(f"forked child exited with {code}, sending {len(data)} bytes")
    status, value = pickle.loads(data)
    if status != "ok":
        raise AssertionError(f"forked child failed:\n{value}")
    return value  # type: ignore[no-any-return]


def report_and_exit(fd: int, target: Callable[..., Any], args: tuple[Any, ...]) -> NoReturn:
    try:
        try:
            payload = pickle.dumps(("ok", target(*args)))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(payload)
    finally:
        # Not sys.exit: the parent's exit hooks (pytest's, Prefect's at-fork ones and
        # threads it left) must not run in the child, and would make it exit with 1.
        os._exit(0)


def read_until_closed(fd: int, timeout: float) -> bytes:
    """Everything written to pipe `fd` until its writer closes it; TimeoutError past `timeout`."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)

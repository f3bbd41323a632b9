"""Ray integration: each Ray worker builds chosen specs as it starts and closes them at the end.

    import ray
    from handles.integrations.ray import WorkerSpecs

    workers = WorkerSpecs(NLP, DB)
    ray.init(runtime_env=workers.runtime_env())  # each worker builds NLP and DB as it starts
    with workers:  # leaving the block: every worker closes them
        ray.get([tag.remote(NLP, text) for text in texts])  # NLP.get() finds it built
    ray.shutdown()

With Prefect, `handles.integrations.prefect.bind_to_workers(RayTaskRunner(...), NLP, DB)`
does all of this for a flow's runner.

Ray runs its tasks in each worker's main thread, the thread of the setup hook,
so thread-scoped specs (sqlite) are built for them too. Ray has no hook for a
worker's end: it stops a job's workers at once when the job ends, running no
exit handlers. So the end is explicit: `stop()` (leaving the block), right
before `ray.shutdown()`, asks every worker of the job to close its specs in that
same main thread, and waits until each has, or has gone. Workers and driver
meet in Ray's key-value store (`ray.experimental.internal_kv`): no extra process.
Never imported by `import handles`; importing it imports ray.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from handles._optional import require
from handles._spec import Spec
from handles.integrations._warm import checked, release, warm

require("ray", "ray")

import ray  # noqa: E402  (after the install hint)
from ray import cloudpickle  # noqa: E402
from ray.experimental import internal_kv  # noqa: E402

__all__ = ["WorkerSpecs"]

logger = logging.getLogger("handles")

NAMESPACE = "handles"
# Sent by a worker's own stop thread to its main thread, where the tasks ran:
# thread-scoped objects are closed by their own thread (see docs/registry.md).
STOP_SIGNAL = getattr(signal, "SIGUSR2", None)
BEAT = 0.5  # seconds between a worker's heartbeats (and its looks for the stop)
GONE_AFTER = 5.0  # a worker whose heartbeat stops this long is gone (Ray ended it)


class WorkerSpecs:
    """Specs built by every Ray worker process of a job as it starts, closed by `stop()`.

    Give `runtime_env()` to `ray.init`; call `stop()` (or leave the block) right
    before `ray.shutdown()`. A worker that starts after `stop()` builds nothing.
    prefect_logs: also send registry lines to Prefect's run logs (Prefect tasks
    on Ray). stop_timeout: seconds `stop()` waits for the workers.
    """

    def __init__(
        self, *specs: Spec[Any], prefect_logs: bool = False, stop_timeout: float = 60.0
    ) -> None:
        self.specs = checked(specs, "WorkerSpecs")
        self.prefect_logs = prefect_logs
        self.stop_timeout = stop_timeout
        self.token = uuid.uuid4().hex[:12]  # several may share one job

    def __repr__(self) -> str:
        return f"WorkerSpecs({', '.join(map(repr, self.specs))})"

    def runtime_env(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`base` (a runtime_env for `ray.init`) plus the setup hook that builds the specs.

        A setup hook already in `base` runs first, in every worker.
        """
        env = dict(base or {})
        previous = env.get("worker_process_setup_hook")
        env["worker_process_setup_hook"] = _SetupHook(
            self.specs, self.token, self.prefect_logs, previous
        )
        return env

    def stop(self) -> int:
        """Right before `ray.shutdown()`: every worker closes its specs; how many confirmed.

        Waits up to `stop_timeout` seconds for each worker that built them; one
        that Ray has already ended is not waited for (its heartbeat has stopped).
        One key stays in Ray's key-value store, so that a worker starting later
        builds nothing: `worker-specs/JOB/TOKEN/stopped`, namespace "handles".
        """
        board = _Board(self.token)
        board.put("stopped")  # kept: a worker starting from now on must see it
        try:
            closed, silent = board.wait_closed(self.stop_timeout)
        finally:
            board.clear("alive", "closed")
        if silent:
            logger.warning(
                "%d Ray worker(s) did not confirm closing %s: %s",
                len(silent),
                ", ".join(spec.kind for spec in self.specs),
                ", ".join(silent),
            )
        return len(closed)

    def __enter__(self) -> WorkerSpecs:
        if not ray.is_initialized():
            raise RuntimeError("call ray.init(runtime_env=workers.runtime_env()) first")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Board:
    """This job's notes in Ray's key-value store: who built, who is alive, who closed."""

    def __init__(self, token: str) -> None:
        job = ray.get_runtime_context().get_job_id()
        self.prefix = f"worker-specs/{job}/{token}/"

    def put(self, key: str, value: str = "") -> None:
        internal_kv._internal_kv_put(self.prefix + key, value, namespace=NAMESPACE)

    def has(self, key: str) -> bool:
        return bool(internal_kv._internal_kv_exists(self.prefix + key, namespace=NAMESPACE))

    def read(self, folder: str) -> dict[str, bytes]:
        start = self.prefix + folder + "/"
        keys = internal_kv._internal_kv_list(start, namespace=NAMESPACE)
        found = {}
        for key in keys:
            value = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
            if value is not None:
                found[key.decode()[len(start) :]] = value
        return found

    def clear(self, *folders: str) -> None:
        for folder in folders:
            key = f"{self.prefix}{folder}/"
            internal_kv._internal_kv_del(key, del_by_prefix=True, namespace=NAMESPACE)

    def wait_closed(self, timeout: float) -> tuple[list[str], list[str]]:
        """(workers that closed, workers still beating that did not) when all closed or timeout."""
        deadline = time.monotonic() + timeout
        beats: dict[str, tuple[bytes, float]] = {}  # worker -> (last beat, when it changed)
        while True:
            now = time.monotonic()
            closed = set(self.read("closed"))
            for worker, beat in self.read("alive").items():
                if beats.get(worker, (None, 0.0))[0] != beat:
                    beats[worker] = (beat, now)
            waiting = [
                worker
                for worker, (_, changed) in beats.items()
                if worker not in closed and now - changed < GONE_AFTER
            ]
            if not waiting or now > deadline:
                return sorted(closed), sorted(waiting)
            time.sleep(0.05)


# -- in each worker -------------------------------------------------------------


class _SetupHook:
    """The `worker_process_setup_hook`: runs in each new worker's main thread.

    Ray unpickles the hook before it puts the driver's script folder and working
    directory on the worker's path (as it does for tasks), so the specs travel as
    bytes, opened once those folders are on the path: a kind defined next to the
    driver's script loads here as it would in a task.
    """

    __name__ = "handles_worker_setup"  # Ray names the hook by it

    def __init__(
        self, specs: tuple[Spec[Any], ...], token: str, prefect_logs: bool, previous: Any
    ) -> None:
        self.specs: bytes = cloudpickle.dumps(specs)  # type: ignore[no-untyped-call]
        self.paths = _driver_paths()
        self.token = token
        self.prefect_logs = prefect_logs
        self.previous = previous

    def __call__(self) -> None:
        if self.previous is not None:
            _hook_function(self.previous)()
        sys.path.extend(path for path in self.paths if path not in sys.path)
        try:
            specs = cloudpickle.loads(self.specs)
        except Exception:
            # Raising here would make Ray end the worker, and start another, for
            # ever; the tasks will meet the same error where it can be seen.
            logger.exception("this worker cannot load the specs to build; their tasks will try")
            return
        if self.prefect_logs:
            # Only with Prefect, which this integration does not need otherwise.
            from handles.integrations.prefect import route_registry_logs  # noqa: PLC0415

            route_registry_logs()
        life = _WorkerLife(specs, _Board(self.token))
        if life.join():
            life.warm()


def _driver_paths() -> list[str]:
    """The folders Ray adds to each worker's path for a script's driver: its own and the cwd."""
    script = os.path.dirname(os.path.realpath(sys.argv[0])) if sys.argv and sys.argv[0] else ""
    folders = [script] if script and script in sys.path else []
    return [*folders, os.path.abspath(os.curdir)]


def _hook_function(hook: Any) -> Callable[[], Any]:
    if callable(hook):
        return hook  # type: ignore[no-any-return]
    module, _, name = str(hook).rpartition(".")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


class _WorkerLife:
    """One worker's specs: built once the board knows the worker, closed when told to stop.

    The worker signs in before it builds anything, so `stop()` waits for every
    worker that built. A thread of its own beats the heart and watches for the
    stop, then has the main thread, where the tasks ran, close the specs.
    """

    def __init__(self, specs: tuple[Spec[Any], ...], board: _Board) -> None:
        self.specs = specs
        self.board = board
        self.worker = f"{ray.get_runtime_context().get_node_id()[:8]}-{os.getpid()}"
        self.main = threading.get_ident()
        self.lock = threading.Lock()
        self.warming = self.stopping = False
        self.closed = threading.Event()
        self.previous_handler: Any = None
        self.by_signal = False

    def join(self) -> bool:
        """Sign in; False when the job is stopping already (then build nothing)."""
        if self.board.has("stopped"):
            return False
        self.board.put(f"alive/{self.worker}", "0")
        if STOP_SIGNAL is not None and threading.current_thread() is threading.main_thread():
            self.previous_handler = signal.signal(STOP_SIGNAL, self._on_signal)
            self.by_signal = True
        threading.Thread(target=self._watch, name="handles-worker-specs", daemon=True).start()
        return True

    def warm(self) -> None:
        with self.lock:
            self.warming = True
        try:
            warm(self.specs)
        finally:
            with self.lock:
                self.warming = False
                stop_now = self.stopping
        if stop_now:  # told to stop while building: close what was built
            self._close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        with self.lock:
            ours, warming = self.stopping, self.warming
        if not ours:  # not our signal: whoever handled it before us
            if callable(self.previous_handler):
                self.previous_handler(signum, frame)
            return
        if not warming:  # else warm() closes them when it is done
            self._close()

    def _close(self) -> None:
        release(self.specs)  # in the main thread: its thread-scoped objects too
        self.closed.set()

    def _watch(self) -> None:
        beat = 0
        while not self.board.has("stopped"):
            time.sleep(BEAT)
            beat += 1
            self.board.put(f"alive/{self.worker}", str(beat))
        with self.lock:
            self.stopping = True
        if self.by_signal:
            signal.pthread_kill(self.main, STOP_SIGNAL)  # type: ignore[arg-type]
        while not self.closed.wait(BEAT if self.by_signal else 0):
            if not self.by_signal:
                # No main thread to ask: close what another thread may close.
                release([spec for spec in self.specs if spec.scope == "process"])
                break
            beat += 1  # still closing (a slow teardown): still alive
            self.board.put(f"alive/{self.worker}", str(beat))
        self.board.put(f"closed/{self.worker}")

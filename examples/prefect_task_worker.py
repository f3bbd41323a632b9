"""Background tasks: `task.delay(spec, i)` served by a Prefect task worker that loads once.

    python examples/prefect_task_worker.py

The demo starts three things and stops all of them at the end, also on errors,
Ctrl-C or SIGTERM:

1. `prefect server start` on 127.0.0.1, on a free port, with its own temporary
   PREFECT_HOME (task workers refuse Prefect's temporary in-process server);
2. a task worker: this file run with `--worker`, serving the `people_in` task;
3. the client (this process): `people_in.delay(nlp, i)` ten times, then waits
   for the results.

Only the spec travels: the client stores it with each task run's parameters,
the worker reads it back and calls `nlp.get()`, which loads the spaCy pipeline
on the first run and reuses it for the other nine. The script prints which
process served each run and how many times it loaded the pipeline.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __name__ == "__main__" and "--worker" not in sys.argv:
    # Prefect reads its settings at import, so they are set first, for this
    # process and (inherited) for the server and the worker: a throwaway home
    # and the API of the server that main() starts on a free loopback port.
    # Your other PREFECT_* settings are kept; two get a default where unset.
    HOME = tempfile.mkdtemp(prefix="handles-prefect-demo-")
    atexit.register(shutil.rmtree, HOME, ignore_errors=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        PORT = sock.getsockname()[1]
    os.environ["PREFECT_HOME"] = HOME
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{PORT}/api"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")

from prefect import task

import handles
from handles import SpacySpec

WORKER_FLAG = "--worker"
RUNS = 10
PEOPLE = ["Ada Lovelace", "Charles Babbage", "Grace Hopper", "Alan Turing"]
TEXTS = [
    "Ada Lovelace met Charles Babbage in London.",
    "Grace Hopper worked on the Harvard Mark I.",
    "Alan Turing visited Manchester.",
]


# --8<-- [start:task]
@task
def people_in(nlp: SpacySpec, index: int) -> dict[str, Any]:
    """Runs in the task worker: the PERSON entities of one text, and the registry's counts."""
    doc = nlp.get()(TEXTS[index % len(TEXTS)])
    stats = handles.registry().stats()[nlp.cache_key()]
    people = [ent.text for ent in doc.ents if ent.label_ == "PERSON"]
    return {"index": index, "pid": os.getpid(), "loads": stats.builds, "people": people}


# --8<-- [end:task]


# -- the processes this demo starts ------------------------------------------------------


@contextmanager
def started(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `args` in a process group of its own; stop the whole group on the way out."""
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    # The group: `prefect server start` runs the web server in a child process.
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_healthy(api_url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180  # a bound on start-up, not a measurement
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"prefect server did not become healthy:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-3000:]


# -- the demo -------------------------------------------------------------------------


def save_pipeline(folder: Path) -> SpacySpec:
    """A small rule-based English pipeline, saved like a trained one would be."""
    import spacy

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "PERSON", "pattern": p} for p in PEOPLE])  # type: ignore[attr-defined]
    nlp.meta["name"] = "demo_people"
    nlp.to_disk(folder / "people-ner")
    return SpacySpec(path=str(folder / "people-ner"))


def main() -> None:
    # SIGTERM ends Python without running `finally`: turn it into SystemExit so
    # the server and the worker are stopped even then.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    api_url = os.environ["PREFECT_API_URL"]
    with tempfile.TemporaryDirectory(prefix="handles-prefect-data-") as tmp:
        folder = Path(tmp)
        nlp = save_pipeline(folder)
        port = str(urllib.parse.urlsplit(api_url).port)
        server_args = [sys.executable, "-m", "prefect", "server", "start"]
        server_args += ["--host", "127.0.0.1", "--port", port]
        print(f"starting the Prefect server at {api_url}")
        with started(server_args, folder / "server.log") as server:
            wait_until_healthy(api_url, server, folder / "server.log")
            print("starting a task worker")
            worker_log = folder / "worker.log"
            with started([sys.executable, __file__, WORKER_FLAG], worker_log) as worker:
                try:
                    results = submit_and_wait(nlp)
                except BaseException:
                    print(f"the task worker's log:\n{tail(worker_log)}", file=sys.stderr)
                    raise
                assert worker.poll() is None, "the worker served every run and still runs"
        report(results)


# --8<-- [start:delay]
def submit_and_wait(nlp: SpacySpec) -> list[dict[str, Any]]:
    futures = [people_in.delay(nlp, i) for i in range(RUNS)]
    print(f"submitted {RUNS} background task runs with .delay(nlp, i)")
    return [result_of(future) for future in futures]


# --8<-- [end:delay]


def result_of(future: Any, timeout: float = 180) -> Any:
    """`future.result()`, asked again while the API has not recorded the run's state yet.

    Prefect 3.8 raises RuntimeError("... has no state ...") when it reads a
    delayed run while the server is still recording one of its state changes
    (seen on busy machines: the run says RUNNING, its state is not stored yet).
    The deadline bounds the wait, so a broken worker fails the demo instead of
    hanging it.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return future.result(timeout=max(1.0, deadline - time.monotonic()))
        except RuntimeError as exc:
            if "has no state" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def report(results: list[dict[str, Any]]) -> None:
    for row in sorted(results, key=lambda r: r["index"]):
        print(
            f"  run {row['index']}: pid {row['pid']}, loads so far {row['loads']}: {row['people']}"
        )
    pids = {row["pid"] for row in results}
    loads = max(row["loads"] for row in results)
    print(f"{len(results)} runs served by {len(pids)} worker process; pipeline loaded {loads}x")
    assert len(pids) == 1, pids
    assert pids != {os.getpid()}, "served by the worker, not by this process"
    assert loads == 1, "loaded once, reused by every later run"


# --8<-- [start:serve]
def serve_forever() -> None:
    """The task worker: runs `people_in` for every `.delay()` until it is stopped."""
    from prefect.task_worker import serve

    serve(people_in)


# --8<-- [end:serve]


if __name__ == "__main__":
    if WORKER_FLAG in sys.argv:
        serve_forever()
    else:
        main()

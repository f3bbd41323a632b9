"""What every Prefect example here does first: a throwaway home, and one server for all processes.

    if __name__ == "__main__":          # spawned workers inherit the environment
        import _prefect_setup

        _prefect_setup.prepare()        # before Prefect is imported: it reads settings then

    ...
    with _prefect_setup.one_server():   # around the flow runs
        ...

- `prepare()` points PREFECT_HOME at a temporary folder, removed at exit, so the
  examples write nothing into your Prefect home. Every other PREFECT_* setting in
  your environment is kept; two get a default only where you have not set them:
  PREFECT_SERVER_ANALYTICS_ENABLED=false (Prefect's telemetry can fail on its own
  database and print long tracebacks) and
  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 (Prefect's default, 20 s, is
  too short for a first start on a busy machine).
- `one_server()` starts Prefect's temporary server once, in this process, and hands
  its URL to every worker through PREFECT_API_URL: a worker process with no API URL
  would start a server of its own. With PREFECT_API_URL already set, your server is
  used and nothing is started. A start that fails says, in one line, what to set.

Not an example itself (nox -s examples and the tests skip files starting with "_").
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", TIMEOUT: "120"}


def prepare() -> str:
    """Set the environment the examples run in; returns the temporary PREFECT_HOME."""
    home = tempfile.mkdtemp(prefix="handles-prefect-demo-")
    os.environ["PREFECT_HOME"] = home
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    # Registered before Prefect is imported, so it runs after Prefect's own exit
    # handlers have stopped the temporary server that uses this folder.
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


@contextmanager
def one_server() -> Iterator[str]:
    """Prefect's API for this process and its workers; yields its URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if url:
        print(f"Prefect API: {url} (your PREFECT_API_URL)")
        yield url
        return
    url = _start_temporary_server()
    # The environment reaches every worker process (pools and Dask alike); the
    # settings reach this process's own clients.
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        del os.environ["PREFECT_API_URL"]


def _start_temporary_server() -> str:
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    server = SubprocessASGIServer()
    started = time.monotonic()
    try:
        # Also registers the server's stop at exit: after Prefect has sent the
        # last log lines (exit handlers registered later run first).
        server.start(timeout=timeout)
    except RuntimeError:
        process = server.server_process
        if process is not None and process.poll() is not None:
            sys.exit(
                f"Prefect's temporary server exited with status {process.returncode} "
                "before answering; its output is above."
            )
        sys.exit(
            f"Prefect's temporary server did not answer within {timeout} s: raise {TIMEOUT} "
            "(for example to 300), or run `prefect server start` and set PREFECT_API_URL."
        )
    seconds = time.monotonic() - started
    print(f"Prefect's temporary server: started once, in {seconds:.0f} s, at {server.api_url}")
    return server.api_url

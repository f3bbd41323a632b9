"""Background tasks: `task.delay(spec, ...)` served by a task worker against a real Prefect
server on loopback (task workers refuse the ephemeral API).

The server, the worker and the client are three processes sharing one PREFECT_HOME
(the client stores the parameters there, the worker stores the results). The test
asserts the parameters round-trip and the worker builds the live object once for
all runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from spec_flows import worker_pythonpath

from support.kinds import EchoSpec

RUNS = 10
CLIENT = f"""
import json, sys
import handles
from spec_flows import remote_touch, result_of
spec = handles.spec_from_json(sys.stdin.read())
futures = [remote_touch.delay(spec, i) for i in range({RUNS})]
print(json.dumps([result_of(f) for f in futures]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (the server runs uvicorn in a child), then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180  # a start-up bound, not a measurement
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prefect server exited:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"prefect server did not become healthy:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def loopback_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME; yields the env to use."""
    pytest.importorskip("prefect", reason="needs prefect")
    home = tmp_path_factory.mktemp("prefect-task-worker")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PYTHONPATH": worker_pythonpath(),
    }
    log = home / "server.log"
    server = start(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env,
        log,
    )
    try:
        wait_until_healthy(env["PREFECT_API_URL"], server, log)
        yield env
    finally:
        stop(server)


def test_delay_is_served_by_a_task_worker_that_builds_once(loopback_server, tmp_path):
    env = loopback_server
    worker_log = tmp_path / "worker.log"
    worker = start(
        [sys.executable, "-c", "import spec_flows; spec_flows.serve_remote_touch()"],
        env,
        worker_log,
    )
    spec = EchoSpec(name=f"background-{uuid.uuid4().hex[:8]}", delay=0.2)
    try:
        client = subprocess.run(
            [sys.executable, "-c", CLIENT],
            input=spec.model_dump_json(),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,  # a failure is reported below with both processes' output
        )
    finally:
        stop(worker)
    assert client.returncode == 0, (
        f"client failed:\n{client.stderr[-4000:]}\nworker:\n"
        f"{worker_log.read_text(errors='replace')[-4000:]}"
    )
    results = json.loads(client.stdout.strip().splitlines()[-1])

    assert sorted(r["index"] for r in results) == list(range(RUNS))
    assert {r["type"] for r in results} == {"EchoSpec"}
    assert {r["spec"] for r in results} == {spec.model_dump_json()}, "parameters round-trip"
    assert len({r["pid"] for r in results}) == 1, "one worker process served every run"
    assert {r["builds"] for r in results} == {1}, "built once, reused by every run"
    assert max(r["hits"] for r in results) >= RUNS - 1

"""Simulated machines on loopback: Dask and Ray clusters started apart from the test, as users do.

A `Node` stands for one host: its processes run from a working directory of
their own, with a `HOME` of their own and only the environment given to it (not
the test's), each command in a process group of its own so that stopping the
node stops everything it started, whatever Dask or Ray spawned under it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

import psutil

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
BIN = Path(sys.executable).parent  # dask and ray console scripts of this environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a fresh machine's shell would have (PATH, locale), plus `extra`; nothing of the flow's.

    PYTHONPATH stands for the tasks' code and handles being installed on the node.
    """
    kept = ("PATH", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME")
    env = {name: os.environ[name] for name in kept if name in os.environ}
    # This checkout's handles, as the test process has it (not some other install).
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(TESTS), str(TESTS.parent / "src")])
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Node:
    """One simulated host: own cwd (`root`), own HOME (`root/home`), own environment."""

    def __init__(self, name: str, root: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "HOME": str(self.home)}
        self.processes: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, args: Sequence[str], label: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{label}.log").open("ab")
        process = subprocess.Popen(
            list(args),
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopped whole, never by name
        )
        self.processes.append((process, log))
        return process

    def log(self, label: str) -> str:
        path = self.root / f"{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, grace: float = 20.0) -> None:
        """Stop everything this node started: SIGTERM, then SIGKILL after `grace` seconds."""
        while self.processes:
            process, log = self.processes.pop()
            stop_group(process.pid, grace)
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            log.close()


def stop_group(leader: int, grace: float) -> None:
    """End the process group led by `leader` and every process descended from it."""
    members = _group(leader)
    with suppress(psutil.NoSuchProcess):
        members.extend(psutil.Process(leader).children(recursive=True))
    members = list({p.pid: p for p in members}.values())
    with suppress(ProcessLookupError):
        os.killpg(leader, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=grace)
    for process in [*alive, *_group(leader)]:
        with suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=10)


def _group(leader: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with suppress(psutil.Error):
            if os.getpgid(process.pid) == leader:
                found.append(process)
    return found


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll `check()` until true; fail naming `what` after `timeout` s (a bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.2)


# -- Dask ------------------------------------------------------------------------------


class DaskCluster:
    """`dask scheduler` on one node and `dask worker --nanny` on each node, apart from the test."""

    def __init__(self, scheduler_node: Node, worker_nodes: Sequence[Node], nworkers: int) -> None:
        self.scheduler_node = scheduler_node
        self.nodes = list(worker_nodes)
        self.nworkers = nworkers
        self.address = f"tcp://127.0.0.1:{free_port()}"

    def start(self) -> None:
        port = self.address.rpartition(":")[2]
        self.scheduler_node.start(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", port,
             "--no-dashboard", "--no-show"],
            "scheduler",
        )  # fmt: skip
        for node in self.nodes:
            self.start_workers(node)
        with self.client() as client:
            client.wait_for_workers(self.size, timeout=180)

    def start_workers(self, node: Node) -> None:
        node.start(
            [str(BIN / "dask"), "worker", self.address, "--nanny", "--host", "127.0.0.1",
             "--nworkers", str(self.nworkers), "--nthreads", "1", "--name", node.name,
             "--no-dashboard", "--local-directory", str(node.root / "dask"),
             "--resources", f"{node.name}=1", "--death-timeout", "120",
             "--memory-limit", "0"],
            "workers",
        )  # fmt: skip

    @property
    def size(self) -> int:
        return len(self.nodes) * self.nworkers

    @contextmanager
    def client(self) -> Iterator[object]:
        import distributed

        with distributed.Client(self.address, timeout=60, set_as_default=False) as client:
            yield client

    def stop(self) -> None:
        for node in [*self.nodes, self.scheduler_node]:
            node.stop()


# -- Ray -------------------------------------------------------------------------------


class RayCluster:
    """`ray start --head` on the first node, `ray start --address` on the others, each blocking.

    Every port a node would take by default is chosen free, so two clusters (or
    another user's) on one machine never meet. Ray itself listens on every
    interface whatever the node address; this is Ray's, not the test's, choice.
    """

    def __init__(self, nodes: Sequence[Node], cpus: int) -> None:
        self.nodes = list(nodes)
        self.cpus = cpus
        self.address = f"127.0.0.1:{free_port()}"
        self.client_address = f"ray://127.0.0.1:{free_port()}"  # Ray Client, on the head
        # Unix socket paths must stay short: not under pytest's deep tmp folders.
        self.temp = Path(os.path.realpath("/tmp")) / f"ray-h-{free_port()}"

    def start(self) -> None:
        head, *others = self.nodes
        port = self.address.rpartition(":")[2]
        head.start(
            [*self._common(head), "--head", "--port", port, "--temp-dir", str(self.temp),
             "--ray-client-server-port", self.client_address.rpartition(":")[2],
             "--include-dashboard", "false",
             "--dashboard-port", str(free_port())],
            "ray",
        )  # fmt: skip
        self.wait_nodes(1)
        for node in others:
            node.start([*self._common(node), "--address", self.address], "ray")
        self.wait_nodes(len(self.nodes))

    def _common(self, node: Node) -> list[str]:
        return [
            str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(self.cpus), "--disable-usage-stats",
            "--object-store-memory", str(80 * 1024 * 1024),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--resources", json.dumps({node.name: 1}),  # tasks can ask for a node by name
        ]  # fmt: skip

    def wait_nodes(self, count: int) -> None:
        wait_for(lambda: self.alive_nodes() >= count, f"{count} Ray node(s)", timeout=180)

    def alive_nodes(self) -> int:
        # `ray status` reads the GCS; before the head is up it fails, which is fine here.
        out = subprocess.run(
            [str(BIN / "ray"), "status", "--address", self.address],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.nodes[0].env,
            check=False,
        )
        if out.returncode != 0:
            return 0
        active = out.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return active.count("node_")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        with suppress(OSError):
            subprocess.run(["rm", "-rf", str(self.temp)], check=False, timeout=60)

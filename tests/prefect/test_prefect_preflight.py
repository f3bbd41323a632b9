"""Preflight: the seed's live objects are found, with the attribute path and the spec to use.

The objects are the ones the support threads pass to tasks: a lock, a lambda, a
generator, a sqlite3 connection, a CPU torch module, an open file.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from handles.integrations.prefect import (
    SPEC_INPUTS,
    PreflightError,
    check_inputs,
    preflight,
)
from support.kinds import EchoSpec

pytestmark = pytest.mark.usefixtures("prefect_server")

LOCK = threading.Lock()


def numbers():
    yield 1


def only(findings):
    assert len(findings) == 1, [str(f) for f in findings]
    return findings[0]


# -- check_inputs on the seed's objects -----------------------------------------------


def test_a_lock_cannot_be_pickled_or_hashed():
    finding = only(check_inputs((threading.RLock(),)))
    assert (finding.path, finding.type_name) == ("args[0]", "RLock")
    assert "cannot be pickled or hashed" in finding.reason
    assert finding.suggestion is None


def test_a_generator_cannot_be_pickled():
    finding = only(check_inputs((), {"rows": numbers()}))
    assert (finding.path, finding.type_name) == ("kwargs['rows']", "generator")


def test_a_sqlite_connection_points_to_sqlite_spec():
    conn = sqlite3.connect(":memory:")
    try:
        finding = only(check_inputs((conn,)))
    finally:
        conn.close()
    assert finding.type_name == "Connection"
    assert "SqliteSpec" in finding.suggestion


def test_an_open_file_points_to_file_spec(tmp_path):
    with open(tmp_path / "out.txt", "w", encoding="utf-8") as out:
        finding = only(check_inputs((out,)))
    assert "cannot be pickled" in finding.reason
    assert "FileSpec" in finding.suggestion
    # Open for reading, cloudpickle copies the contents: still a live object.
    with open(tmp_path / "out.txt", encoding="utf-8") as readable:
        finding = only(check_inputs((readable,)))
    assert "copied into every task" in finding.reason
    assert "FileSpec" in finding.suggestion


def test_a_cpu_torch_module_pickles_but_points_to_torch_model_spec():
    torch = pytest.importorskip("torch", reason="needs torch")
    finding = only(check_inputs((), {"model": torch.nn.Linear(4, 2)}))
    assert (finding.path, finding.type_name) == ("kwargs['model']", "Linear")
    assert "copied into every task" in finding.reason
    assert "TorchModelSpec" in finding.suggestion


def test_a_lambda_travels_by_cloudpickle_but_not_by_pickle():
    assert check_inputs((lambda x: x + 1,)) == []
    finding = only(check_inputs((lambda x: x + 1,), pickler="pickle", cache_key=False))
    assert finding.type_name.startswith("function ")
    assert finding.type_name.endswith("<lambda>")
    # A lambda that captures a lock is reported at the lock.
    finding = only(check_inputs((lambda: LOCK,)))
    assert finding.path == "args[0].__globals__['LOCK']"


def test_the_path_reaches_the_offending_attribute():
    class Pool:
        def __init__(self):
            self.size = 5
            self._lock = threading.RLock()

    class Engine:
        def __init__(self):
            self.url = "sqlite://"
            self.pool = Pool()

    class Service:
        def __init__(self):
            self.name = "svc"
            self.engine = Engine()

    finding = only(check_inputs((Service(),)))
    assert f"{finding.path}: {finding.type_name}" == "args[0].engine.pool._lock: RLock"


def test_a_sqlalchemy_engine_inside_an_argument_points_to_database_spec(tmp_path):
    sqlalchemy = pytest.importorskip("sqlalchemy", reason="needs SQLAlchemy")

    class Repository:
        def __init__(self):
            self.engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
            self.engine.connect().close()

    repo = Repository()
    try:
        finding = only(check_inputs((repo,)))
    finally:
        repo.engine.dispose()
    assert finding.path.startswith("args[0].engine.")
    assert "belongs to a SQLAlchemy Engine" in finding.suggestion
    assert "DatabaseSpec" in finding.suggestion


def test_specs_and_plain_data_pass():
    spec = EchoSpec(name="fine")
    assert check_inputs((spec, 1, "x", [1.5, None], {"s": spec}), {"t": (spec,)}) == []


def test_thread_runner_only_needs_the_cache_key():
    findings = check_inputs((threading.Lock(),), transport=False)
    assert "cannot be hashed for a cache key" in only(findings).reason
    assert check_inputs((threading.Lock(),), transport=False, cache_key=False) == []


# -- the decorator, in real flows ------------------------------------------------------


@task
def use_lock(lock, marker: str) -> str:
    Path(marker).write_text("ran", encoding="utf-8")
    return "task"


@task(cache_policy=NO_CACHE)
def without_cache(lock, marker: str) -> str:
    Path(marker).write_text("ran", encoding="utf-8")
    return "fallback"


@task(cache_policy=SPEC_INPUTS - "lock")
def lock_not_in_key(lock, marker: str) -> str:
    Path(marker).write_text("ran", encoding="utf-8")
    return "task"


def flow_calling(checked, runner, how: str = "submit"):
    @flow(task_runner=runner)
    def calls(marker: str):
        lock = threading.Lock()  # made inside the flow: flow parameters must serialize
        if how == "submit":
            future = checked.submit(lock, marker)
            return None if future is None else future.result()
        return checked(lock, marker)

    return calls


def test_raise_refuses_before_submission(tmp_path):
    marker = tmp_path / "ran"
    run = flow_calling(preflight(use_lock), ThreadPoolTaskRunner(max_workers=1))
    state = run(str(marker), return_state=True)
    assert state.is_failed()
    with pytest.raises(PreflightError) as caught:
        state.result()
    assert "args[0]: lock cannot be hashed for a cache key" in str(caught.value)
    assert caught.value.findings[0].path == "args[0]"
    assert not marker.exists(), "the task never ran"


def test_process_runner_needs_picklable_arguments(tmp_path):
    run = flow_calling(preflight(without_cache), ProcessPoolTaskRunner(max_workers=1))
    state = run(str(tmp_path / "ran"), return_state=True)
    with pytest.raises(PreflightError, match=r"args\[0\]: lock cannot be pickled"):
        state.result()


def test_threads_without_hashing_let_a_lock_through(tmp_path):
    for checked in (preflight(without_cache), preflight(lock_not_in_key)):
        run = flow_calling(checked, ThreadPoolTaskRunner(max_workers=1))
        assert run(str(tmp_path / "ran")) in ("task", "fallback")


def test_warn_logs_and_runs(tmp_path, caplog):
    marker = tmp_path / "ran"
    run = flow_calling(preflight(use_lock, mode="warn"), ThreadPoolTaskRunner(max_workers=1))
    assert run(str(marker)) == "task"
    assert marker.exists()
    assert "args[0]: lock cannot be hashed" in caplog.text


def test_skip_returns_none_without_running(tmp_path):
    marker = tmp_path / "ran"
    checked = preflight(use_lock, mode="skip")
    assert flow_calling(checked, ThreadPoolTaskRunner(max_workers=1))(str(marker)) is None
    assert (
        flow_calling(checked, ThreadPoolTaskRunner(max_workers=1), how="call")(str(marker)) is None
    )
    assert not marker.exists()


def test_fallback_runs_the_other_task(tmp_path):
    marker = tmp_path / "ran"
    checked = preflight(use_lock, mode="fallback", fallback=without_cache)
    for how in ("submit", "call"):
        run = flow_calling(checked, ThreadPoolTaskRunner(max_workers=1), how=how)
        assert run(str(marker)) == "fallback"


def test_map_checks_every_element(tmp_path):
    from prefect import unmapped

    checked = preflight(use_lock)
    marker = str(tmp_path / "ran")

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def mapped(items: list[str]) -> list[str]:
        return checked.map(items, unmapped(marker)).result()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def mapped_locks() -> None:
        checked.map([threading.Lock(), "fine"], unmapped(marker))

    assert mapped(["a", "b"]) == ["task", "task"]
    with pytest.raises(PreflightError, match=r"args\[0\]\[0\]: lock"):
        mapped_locks()


@task
def echo_item(item: str) -> str:
    return item


def test_map_over_a_generator_maps_every_item_and_is_no_finding():
    # Prefect lists a mapped generator itself; preflight must neither drain it
    # nor report it.
    checked = preflight(echo_item)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def mapped() -> list[str]:
        return checked.map(item for item in ["a", "b", "c"]).result()

    assert mapped() == ["a", "b", "c"]


def test_delay_needs_picklable_arguments():
    checked = preflight(use_lock)
    findings = checked.check((threading.Lock(), "m"), {}, "delay")
    assert "cannot be pickled" in only(findings).reason
    assert checked.check((EchoSpec(name="x"), "m"), {}, "delay") == []
    assert checked.name == use_lock.name, "everything else is the task's"


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="fallback"):
        preflight(use_lock, mode="fallback")
    with pytest.raises(ValueError, match="mode"):
        preflight(use_lock, mode="ignore")
    with pytest.raises(TypeError, match="above @task"):
        preflight(lambda x: x)


def test_a_checked_task_survives_pickling():
    """Process pools may pickle the wrapper along with a task defined in __main__."""
    cloudpickle = pytest.importorskip("cloudpickle")
    copy = cloudpickle.loads(cloudpickle.dumps(preflight(use_lock, mode="warn")))
    assert copy.mode == "warn"
    assert copy.name == use_lock.name
    assert copy.check((threading.Lock(), "m"), {}, "delay")


# -- thread-bound objects on thread pools ---------------------------------------------


class Holder:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


def test_a_sqlite_connection_is_reported_when_it_only_changes_thread():
    conn = sqlite3.connect(":memory:")
    try:
        for value, path in ((conn, "args[0]"), (Holder(conn), "args[0].conn")):
            quiet = check_inputs((value,), transport=False, cache_key=False)
            assert quiet == [], "a direct call stays in its thread"
            finding = only(
                check_inputs((value,), transport=False, cache_key=False, other_thread=True)
            )
            assert finding.path == path
            assert "can only be used in that same thread" in finding.reason
            assert finding.suggestion is not None
            assert "SqliteSpec" in finding.suggestion
    finally:
        conn.close()


@task(cache_policy=NO_CACHE)
def count_rows(conn) -> int:
    return conn.execute("select 1").fetchone()[0]


def test_submitting_a_connection_to_a_thread_pool_is_refused_even_without_caching():
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def seed_failure() -> int:
        conn = sqlite3.connect(":memory:")
        return preflight(count_rows).submit(conn).result()

    state = seed_failure(return_state=True)
    with pytest.raises(PreflightError, match="can only be used in that same thread"):
        state.result()

"""The seed scenarios: a sqlite database queried from many submitted tasks, and a spaCy
pipeline used by tasks in a process pool. Both pass the spec, never the live object."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from spec_flows import query_many, run_logs, serialization_errors, tag_texts

pytestmark = pytest.mark.usefixtures("prefect_server")


def threads_by_pid(results: list[dict[str, Any]]) -> dict[int, set[int]]:
    seen: dict[int, set[int]] = defaultdict(set)
    for row in results:
        seen[row["pid"]].add(row["thread"])
    return seen


def assert_one_build_per_thread(results: list[dict[str, Any]], key: str) -> None:
    for pid, threads in threads_by_pid(results).items():
        for thread in threads:
            fresh = [r["fresh"][key] for r in results if (r["pid"], r["thread"]) == (pid, thread)]
            assert fresh.count(True) == 1
        assert max(r["builds"][key] for r in results if r["pid"] == pid) == len(threads)


@pytest.fixture
def items_db(tmp_path):
    path = tmp_path / "items.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table items (value integer)")
        conn.executemany("insert into items values (?)", [(v,) for v in range(100)])
    conn.close()
    return path


def test_sqlite_queried_from_many_submitted_tasks(items_db):
    sqlite_kind = pytest.importorskip("handles.specs.sqlite", reason="SqliteSpec has not landed")
    db = sqlite_kind.SqliteSpec(path=str(items_db), read_only=True)
    thresholds = list(range(0, 100, 8))  # 13 tasks
    runner = ThreadPoolTaskRunner(max_workers=4)  # process pools: see test_prefect_runners
    state = query_many.with_options(task_runner=runner)(db, thresholds, return_state=True)
    assert state.is_completed(), state
    results = state.result()

    assert [r["count"] for r in results] == [100 - t for t in thresholds]
    assert_one_build_per_thread(results, db.cache_key())  # sqlite: one connection per thread
    logs = [log.message for log in run_logs(state.state_details.flow_run_id)]
    assert serialization_errors(logs) == []


def test_spacy_pipeline_in_a_process_pool(tmp_path):
    spacy = pytest.importorskip("spacy", reason="needs spaCy")
    spacy_kind = pytest.importorskip("handles.specs.spacy", reason="SpacySpec has not landed")
    from support.tiny_spacy import TEXT, save_tiny_pipeline

    path = save_tiny_pipeline(tmp_path / "tiny")
    nlp = spacy_kind.SpacySpec(path=str(path))
    texts = [TEXT] * 6
    runner = ProcessPoolTaskRunner(max_workers=2)
    state = tag_texts.with_options(task_runner=runner)(nlp, texts, return_state=True)
    assert state.is_completed(), state
    results = state.result()

    assert {r["tokens"] for r in results} == {len(spacy.load(path)(TEXT))}
    key = nlp.cache_key()
    for pid in threads_by_pid(results):
        assert {r["builds"][key] for r in results if r["pid"] == pid} == {1}
    logs = [log.message for log in run_logs(state.state_details.flow_run_id)]
    assert serialization_errors(logs) == []

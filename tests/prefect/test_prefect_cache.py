"""Cache keys for tasks that take specs: Prefect's own policies, SPEC_INPUTS, isolation, secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from prefect.cache_policies import DEFAULT, INPUTS, RUN_ID, TASK_SOURCE
from prefect.locking.filesystem import FileSystemLockManager
from prefect.locking.memory import MemoryLockManager
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from spec_flows import (
    ModelSpec,
    called_twice,
    computations,
    compute_once,
    submitting_flow,
)

from handles.integrations.prefect import SPEC_DEFAULT, SPEC_INPUTS, SpecInputs
from support.kinds import EchoSpec

pytestmark = pytest.mark.usefixtures("prefect_server")


def key(policy, **inputs):
    return policy.compute_key(task_ctx=None, inputs=inputs, flow_parameters={})


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# -- keys without a run ---------------------------------------------------------------


def test_spec_inputs_keys_specs_by_identity_only():
    cpu = ModelSpec(weights=unique("w"), device="cpu")
    cuda = cpu.replace(device="cuda:0")
    other = cpu.replace(weights=unique("w"))
    assert key(SPEC_INPUTS, model=cpu, n=1) == key(SPEC_INPUTS, model=cuda, n=1)
    assert key(SPEC_INPUTS, model=cpu, n=1) != key(SPEC_INPUTS, model=other, n=1)
    assert key(SPEC_INPUTS, model=cpu, n=1) != key(SPEC_INPUTS, model=cpu, n=2)
    # Prefect's INPUTS hashes the whole dump, placement included.
    assert key(INPUTS, model=cpu) != key(INPUTS, model=cuda)


def test_spec_inputs_finds_specs_in_lists_and_dicts_and_leaves_the_rest_to_inputs():
    cpu = ModelSpec(weights="w", device="cpu")
    cuda = cpu.replace(device="cuda")
    assert key(SPEC_INPUTS, models=[cpu], by={"m": (cpu,)}) == key(
        SPEC_INPUTS, models=[cuda], by={"m": (cuda,)}
    )
    plain = {"n": 3, "names": ["a", "b"], "opts": {"x": 1.5}}
    assert key(SPEC_INPUTS, **plain) == key(INPUTS, **plain)


def test_spec_inputs_excludes_and_composes():
    spec = ModelSpec(weights="w")
    assert key(SPEC_INPUTS - "n", model=spec, n=1) == key(SPEC_INPUTS - "n", model=spec, n=2)
    assert isinstance(SPEC_INPUTS - "n", SpecInputs)
    composed = (SPEC_INPUTS + TASK_SOURCE).configure(
        isolation_level="SERIALIZABLE", lock_manager=MemoryLockManager(), key_storage="/tmp/k"
    )
    assert composed.isolation_level == "SERIALIZABLE"
    assert any(isinstance(p, SpecInputs) for p in composed.policies)
    assert any(isinstance(p, SpecInputs) for p in SPEC_DEFAULT.policies)
    assert RUN_ID in SPEC_DEFAULT.policies


def test_keys_are_equal_in_other_processes_and_hash_seeds():
    spec = EchoSpec(name="cross-process", delay=0.5)
    script = (
        "import json, sys\n"
        "from prefect.cache_policies import INPUTS\n"
        "from handles.integrations.prefect import SPEC_INPUTS\n"
        "from support.kinds import EchoSpec\n"
        "spec = EchoSpec.model_validate_json(sys.stdin.read())\n"
        "inputs = {'spec': spec, 'n': [1, 2]}\n"
        "keys = [p.compute_key(None, inputs, {}) for p in (INPUTS, SPEC_INPUTS)]\n"
        "print(json.dumps(keys))\n"
    )
    here = [key(INPUTS, spec=spec, n=[1, 2]), key(SPEC_INPUTS, spec=spec, n=[1, 2])]
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            input=spec.model_dump_json(),
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(out.stdout) == here


# -- Prefect's own policies with specs ------------------------------------------------


def test_default_policy_hits_within_one_run(tmp_path):
    ledger = str(tmp_path / "ledger")
    spec = EchoSpec(name=unique("default"))
    assert compute_once.cache_policy == DEFAULT
    assert called_twice(spec, spec.replace(), ledger) == ["Completed", "Cached"]
    assert computations(ledger) == 1
    # RUN_ID is part of the default key: a new run computes again.
    assert called_twice(spec, spec, ledger) == ["Completed", "Cached"]
    assert computations(ledger) == 2


def test_inputs_and_task_source_hit_across_runs(tmp_path):
    ledger = str(tmp_path / "ledger")
    compute = compute_once.with_options(cache_policy=INPUTS + TASK_SOURCE)
    run = submitting_flow(compute, ThreadPoolTaskRunner(max_workers=1), calls=1)
    spec = EchoSpec(name=unique("across-runs"))
    assert run(spec, ledger) == ["Completed"]
    assert run(spec.replace(), ledger) == ["Cached"]
    assert computations(ledger) == 1
    assert run(spec.replace(delay=0.001), ledger) == ["Completed"], "INPUTS sees placement"


def test_spec_inputs_keeps_the_cache_across_processes_and_placements(tmp_path):
    """Computed on a process pool with the model on cpu, hit on a thread pool on cuda."""
    ledger = str(tmp_path / "ledger")
    policy = (SPEC_INPUTS + TASK_SOURCE).configure(key_storage=tmp_path / "keys")
    compute = compute_once.with_options(cache_policy=policy)
    model = ModelSpec(weights=unique("weights"), device="cpu")

    in_workers = submitting_flow(compute, ProcessPoolTaskRunner(max_workers=1), calls=1)
    assert in_workers(model, ledger) == ["Completed"]
    in_threads = submitting_flow(compute, ThreadPoolTaskRunner(max_workers=1), calls=1)
    assert in_threads(model.replace(device="cuda"), ledger) == ["Cached"]
    assert computations(ledger) == 1
    assert list((tmp_path / "keys").iterdir()), "cache records go to the configured key storage"


# -- SERIALIZABLE isolation -----------------------------------------------------------


def assert_computed_once(run, ledger: str) -> None:
    # The build's delay (placement: not in the key) keeps the first run inside
    # its transaction while the second starts, so the second really waits.
    spec = EchoSpec(name=unique("serializable"), delay=0.5)
    states = run(spec, ledger)
    assert sorted(states) == ["Cached", "Completed"], states
    assert computations(ledger) == 1


def serializable(lock_manager, tmp_path: Path):
    policy = (SPEC_INPUTS + TASK_SOURCE).configure(
        isolation_level="SERIALIZABLE", lock_manager=lock_manager, key_storage=tmp_path / "keys"
    )
    return compute_once.with_options(cache_policy=policy)


def test_serializable_threads_compute_once_with_a_memory_lock(tmp_path):
    compute = serializable(MemoryLockManager(), tmp_path)
    run = submitting_flow(compute, ThreadPoolTaskRunner(max_workers=2), calls=2)
    assert_computed_once(run, str(tmp_path / "ledger"))


def redis_lock_manager():
    url = os.environ.get("HANDLES_TEST_REDIS_URL")
    if not url:
        pytest.skip("HANDLES_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/15)")
    locking = pytest.importorskip("prefect_redis.locking", reason="needs prefect-redis")
    return locking.RedisLockManager(connection_url=url)


@pytest.mark.parametrize("locks", ["files", "redis"])
def test_serializable_processes_compute_once(tmp_path, locks):
    if locks == "files":
        manager = FileSystemLockManager(lock_files_directory=tmp_path / "locks")
    else:
        manager = redis_lock_manager()
    compute = serializable(manager, tmp_path)
    run = submitting_flow(compute, ProcessPoolTaskRunner(max_workers=2), calls=2)
    assert_computed_once(run, str(tmp_path / "ledger"))

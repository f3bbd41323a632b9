"""What handles relies on in Prefect, on every release it supports (3.8.0 to the newest).

`nox -s tests` runs these on the newest Prefect in constraints.txt, `nox -s
prefect-floor` on the oldest pyproject.toml allows. What changed in between and
matters here (docs/prefect.md, "Prefect versions"):

- ProcessPoolTaskRunner's `initializer=` arrived in 3.8.0: bind_to_workers and
  warm_up need it, and refuse older releases by name;
- task inputs are hashed from JSON first, cloudpickle second, in both: a spec's
  key comes from its canonical JSON (3.9.1 changed only DataFrame hashing and
  TASK_SOURCE for code without source);
- 3.9.1 resets a process-pool worker's environment after each task (3.8 kept each
  task's settings there): specs built at worker start read the environment the
  worker inherited, on both.
"""

from __future__ import annotations

import threading
import uuid

import prefect
import pytest
from prefect.cache_policies import INPUTS
from prefect.exceptions import HashError
from prefect.task_runners import ProcessPoolTaskRunner
from prefect.utilities import hashing
from spec_flows import ModelSpec, VaultSpec, fan_out

from handles.integrations import _prefect_version
from handles.integrations.prefect import bind_to_workers

TOKEN_ENV = "HANDLES_PREFECT_VERSION_TEST_TOKEN"


def test_installed_prefect_meets_the_floor_and_releases_parse():
    assert _prefect_version.installed_release() >= _prefect_version.PROCESS_POOL_INITIALIZER
    assert _prefect_version.installed_release("3.9.1rc1") == (3, 9, 1)
    assert _prefect_version.installed_release("3.10.0") > (3, 9, 1)
    assert _prefect_version.installed_release("nightly") == ()


def test_bind_to_workers_names_the_release_a_process_pool_needs(monkeypatch):
    # On 3.4-3.7 the runner would drop the initializer: nothing would be built.
    monkeypatch.setattr(prefect, "__version__", "3.7.8")
    with pytest.raises(RuntimeError, match=r"needs prefect>=3\.8\.0; prefect 3\.7\.8 is installed"):
        bind_to_workers(ProcessPoolTaskRunner(max_workers=1), ModelSpec(weights="w"))


def test_require_prefect_passes_or_names_feature_and_release():
    _prefect_version.require_prefect((3, 8, 0), "a feature")
    with pytest.raises(RuntimeError, match=r"^a future feature needs prefect>=99\.1;"):
        _prefect_version.require_prefect((99, 1), "a future feature")


def test_inputs_hash_a_spec_from_its_json_never_by_pickling(monkeypatch):
    spec = ModelSpec(weights="w", device="cpu")
    expected = INPUTS.compute_key(task_ctx=None, inputs={"spec": spec}, flow_parameters={})

    def no_pickling(*args, **kwargs):
        raise AssertionError("hashed by cloudpickle")

    # With the pickling fallback gone, a spec still hashes (from its JSON), to the
    # same key; a live object no longer does.
    monkeypatch.setattr(hashing.cloudpickle, "dumps", no_pickling)
    again = INPUTS.compute_key(task_ctx=None, inputs={"spec": spec}, flow_parameters={})
    assert again == expected
    with pytest.raises(ValueError, match="could not be serialized") as refused:
        INPUTS.compute_key(task_ctx=None, inputs={"lock": threading.Lock()}, flow_parameters={})
    assert isinstance(refused.value.__cause__, HashError)


def test_process_pool_workers_build_at_start_from_the_environment_they_inherit(
    prefect_server, monkeypatch
):
    secret = uuid.uuid4().hex
    monkeypatch.setenv(TOKEN_ENV, secret)  # set before the pool starts: workers inherit it
    spec = VaultSpec(name=f"vault-{secret[:8]}", token=f"env:{TOKEN_ENV}")
    runner = bind_to_workers(ProcessPoolTaskRunner(max_workers=1), spec)
    state = fan_out.with_options(task_runner=runner)([spec], 3, return_state=True)
    assert state.is_completed(), state
    results = state.result()
    key = spec.cache_key()
    # Built once, at worker start (no task found it missing), and kept by every task,
    # whether or not Prefect resets the environment between tasks.
    assert len({r["pid"] for r in results}) == 1
    assert [r["fresh"][key] for r in results] == [False, False, False]
    assert {r["builds"][key] for r in results} == {1}

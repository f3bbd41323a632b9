"""Prefect tests: one ephemeral Prefect server for the whole session.

Starting Prefect's server costs 15-20 s, so every test that runs flows shares the
`prefect_server` fixture below. Worker processes (process pools, Dask) import the
tasks from `spec_flows.py` by name, so PYTHONPATH carries tests/ and this folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Prefect's telemetry heartbeat can fail on the server's own SQLite database
# ("database is locked") and print long tracebacks that hide real failures.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary Prefect API and home for the session; yields the home folder."""
    pytest.importorskip("prefect", reason="the Prefect tests need prefect installed")
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness
    from spec_flows import worker_pythonpath

    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", worker_pythonpath())
        patch.setenv("PREFECT_HOME", str(home))
        with (
            temporary_settings(
                updates={
                    PREFECT_HOME: home,
                    PREFECT_LOCAL_STORAGE_PATH: home / "storage",
                    PREFECT_SERVER_ANALYTICS_ENABLED: False,
                }
            ),
            prefect_test_harness(server_startup_timeout=120),
        ):
            yield home

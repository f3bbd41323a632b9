"""Every script in examples/ runs to the end and exits 0; a failure shows its output.

quickstart.py and prefect_specs.py (the README's demos) are run by test_docs.py.
Files starting with "_" are helpers the examples import, not examples.

Most examples start a Prefect server or worker processes, or load models, and
take from a few seconds to about a minute each on this project's 2-core
machines: they are marked slow and run here only with HANDLES_RUN_EXAMPLES=1,
because `nox -s examples` runs every script anyway. The fast ones run always.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.scripts import run_script

ROOT = Path(__file__).resolve().parent.parent
RUN_BY_TEST_DOCS = {"quickstart.py", "prefect_specs.py"}
EXAMPLES = sorted(
    p
    for p in (ROOT / "examples").glob("*.py")
    if p.name not in RUN_BY_TEST_DOCS and not p.name.startswith("_")
)

# Measured under 2 s each; a script not listed here is treated as slow, so a new
# heavy example can never lengthen CI by accident.
FAST = {"async_database.py", "data_file.py", "data_sql.py"}
RUN_SLOW = os.environ.get("HANDLES_RUN_EXAMPLES") == "1"
SKIP_SLOW = "run by nox -s examples (set HANDLES_RUN_EXAMPLES=1 to run it here)"


def cases() -> list[object]:
    slow = [pytest.mark.slow, pytest.mark.skipif(not RUN_SLOW, reason=SKIP_SLOW)]
    return [
        pytest.param(script, id=script.name, marks=[] if script.name in FAST else slow)
        for script in EXAMPLES
    ]


@pytest.mark.parametrize("script", cases())
def test_example_runs(script, tmp_path):
    # Under pytest's own 300 s limit, so the group is stopped here, not abandoned.
    run_script(script, tmp_path, timeout=60 if script.name in FAST else 270)


def test_fast_examples_exist():
    assert not FAST - {p.name for p in EXAMPLES}, "FAST names a script that is gone"


def test_a_failing_example_shows_its_output(tmp_path):
    script = tmp_path / "broken_example.py"
    script.write_text(
        "import sys\n"
        "print('step 1 done')\n"
        'sys.exit("Prefect\'s temporary server did not answer within 1 s: raise it")\n'
    )
    with pytest.raises(pytest.fail.Exception) as failure:
        run_script(script, tmp_path, timeout=60)
    message = str(failure.value)
    assert "broken_example.py exited with status 1" in message
    assert "step 1 done" in message  # stdout
    assert "did not answer within 1 s: raise it" in message  # stderr


# -- examples/_prefect_setup.py: what every Prefect example does first ----------------


@pytest.fixture
def prefect_setup(monkeypatch):
    pytest.importorskip("prefect")
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import _prefect_setup

    return _prefect_setup


def test_examples_keep_the_users_prefect_settings(prefect_setup, monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "45")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    monkeypatch.setenv("PREFECT_HOME", "/users/own/home")
    home = prefect_setup.prepare()
    assert os.environ["PREFECT_HOME"] == home != "/users/own/home"  # nothing written there
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "45"
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "WARNING"
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"  # a default where unset


def test_examples_raise_prefects_startup_timeout_where_unset(prefect_setup, monkeypatch):
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    monkeypatch.setenv("PREFECT_HOME", "restored-after-this-test")
    prefect_setup.prepare()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "120"


def test_a_users_api_url_is_used_and_no_server_started(prefect_setup, monkeypatch):
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def no_start(self, timeout=None):
        raise AssertionError("started a server although PREFECT_API_URL was set")

    monkeypatch.setattr(SubprocessASGIServer, "start", no_start)
    with (
        temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}),
        prefect_setup.one_server() as url,
    ):
        assert url == "http://127.0.0.1:4200/api"


def test_a_slow_server_start_says_what_to_raise_in_one_line(prefect_setup, monkeypatch):
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def timed_out(self, timeout=None):
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(SubprocessASGIServer, "start", timed_out)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with (
        temporary_settings(updates={PREFECT_API_URL: None}),
        pytest.raises(SystemExit) as stopped,
        prefect_setup.one_server(),
    ):
        pass
    message = str(stopped.value.code)
    assert "\n" not in message
    assert "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in message
    assert "PREFECT_API_URL" not in os.environ

"""The integrations stay out of `import handles`, and preflight works without Prefect."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, sys
import handles
before = sorted(m for m in ("prefect", "distributed", "cloudpickle", "ray") if m in sys.modules)
from handles.integrations.preflight import check_inputs
import threading
findings = check_inputs((threading.Lock(),), cache_key=False, pickler="pickle")
print(json.dumps({"before": before, "after": "prefect" in sys.modules,
                  "paths": [f.path for f in findings]}))
"""


def test_import_handles_imports_no_integration():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result == {"before": [], "after": False, "paths": ["args[0]"]}


ENGINES = """
import json, sys
import handles.integrations.prefect
print(json.dumps(sorted(m for m in ("ray", "prefect_ray", "prefect_dask") if m in sys.modules)))
"""


def test_the_prefect_integration_imports_no_engine_it_is_not_given():
    command = [sys.executable, "-c", ENGINES]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []

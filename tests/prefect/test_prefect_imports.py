"""The integrations stay out of `import handles`, and preflight works without Prefect."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, sys
import handles
before = sorted(m for m in ("prefect", "distributed", "cloudpickle") if m in sys.modules)
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

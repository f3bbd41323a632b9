"""Prefect integration: specs as task inputs under any task runner.

    from handles.integrations.prefect import SPEC_INPUTS, bind_to_workers, preflight

    @preflight                      # refuse live objects before submission
    @task(cache_policy=SPEC_INPUTS + TASK_SOURCE)
    def tag(nlp: SpacySpec, text: str) -> list[str]:
        return [ent.label_ for ent in nlp.get()(text).ents]

    @flow(task_runner=bind_to_workers(ProcessPoolTaskRunner(max_workers=2), NLP))
    def pipeline(texts: list[str]) -> None:
        tag.map(NLP, texts)         # every run gets NLP whole; built once per worker

- `SPEC_INPUTS`: a cache policy that keys a spec by its `cache_key()` (identity
  only) and every other input exactly as Prefect's INPUTS does, so moving a
  model from cpu to cuda keeps its cache. `SPEC_DEFAULT` is the spec-aware
  counterpart of Prefect's default policy.
- `bind_to_workers`: a task runner (threads, processes, Dask, Ray) whose workers
  build chosen specs as they start and close them as they stop.
- `warm_up`: a worker initializer that builds chosen specs before the first task.
- `route_registry_logs`: the registry's build and eviction lines in the run logs.
- `publish_stats`: this process's registry as a table artifact of the current
  run; bound runners publish one per worker as they stop.
- `preflight`: checks a task's arguments before submission (see `.preflight`).
- `AnySpec`: a flow parameter type taking any kind of spec, or its JSON as a
  deployment sends it.

Never imported by `import handles`; importing this module imports Prefect.
Each concern lives in a module of its own (`_prefect_cache`, `_prefect_params`,
`_prefect_logs`, `_prefect_workers`, `_prefect_preflight`); this one is the
public face.
"""

from __future__ import annotations

from handles._optional import require

require("prefect", "prefect")  # before any Prefect import: say what to install

from handles.integrations._prefect_cache import (  # noqa: E402
    SPEC_DEFAULT,
    SPEC_INPUTS,
    SpecInputs,
)
from handles.integrations._prefect_logs import route_registry_logs  # noqa: E402
from handles.integrations._prefect_params import AnySpec  # noqa: E402
from handles.integrations._prefect_preflight import PreflightTask, preflight  # noqa: E402
from handles.integrations._prefect_stats import publish_stats  # noqa: E402
from handles.integrations._prefect_workers import (  # noqa: E402
    BoundThreadPoolTaskRunner,
    bind_to_workers,
    warm_up,
)
from handles.integrations.preflight import Finding, PreflightError, check_inputs  # noqa: E402

__all__ = [
    "SPEC_DEFAULT",
    "SPEC_INPUTS",
    "AnySpec",
    "BoundThreadPoolTaskRunner",
    "Finding",
    "PreflightError",
    "PreflightTask",
    "SpecInputs",
    "bind_to_workers",
    "check_inputs",
    "preflight",
    "publish_stats",
    "route_registry_logs",
    "warm_up",
]

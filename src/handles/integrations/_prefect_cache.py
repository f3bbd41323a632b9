"""Cache keys for Prefect: a spec keyed by its `cache_key()`, every other input as INPUTS does."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from prefect.cache_policies import RUN_ID, TASK_SOURCE, CachePolicy, Inputs

from handles._spec import Spec
from handles.integrations._forgive import AsLive

if TYPE_CHECKING:
    from prefect.context import TaskRunContext

__all__ = ["SPEC_DEFAULT", "SPEC_INPUTS", "SpecInputs"]

# What a spec contributes to a cache key in place of its full dump.
SPEC_MARKER = "handles-spec"


@dataclass
class SpecInputs(CachePolicy):
    """Like Prefect's INPUTS, but a spec is keyed by its `cache_key()`.

    Placement fields (device, pool size, timeouts) never move the key, and a
    secret reference is keyed by where the secret lives, never by its value.
    Specs inside plain lists, tuples and dicts are found too. Every other
    input is hashed by Prefect's own INPUTS policy, so a call without specs
    gets exactly the INPUTS key.

    Exclude an argument with `SPEC_INPUTS - "name"`, before composing: Prefect's
    compound policies only forward `-` to their own INPUTS.
    """

    exclude: list[str] = field(default_factory=list)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        keyed = {name: _keyed(value) for name, value in (inputs or {}).items()}
        inner = Inputs(exclude=list(self.exclude))
        key: str | None = inner.compute_key(
            task_ctx=task_ctx, inputs=keyed, flow_parameters=flow_parameters, **kwargs
        )
        return key

    def __sub__(self, other: str) -> SpecInputs:
        if not isinstance(other, str):
            raise TypeError("Can only subtract strings from key policies.")
        return replace(self, exclude=[*self.exclude, other])


def _keyed(value: Any) -> Any:
    """`value` with every spec replaced by its cache key; untouched when it holds none."""
    if isinstance(value, AsLive):  # a live object sent as its spec (preflight): the spec's key
        value = value.spec
    if isinstance(value, Spec):
        return {SPEC_MARKER: value.cache_key()}
    # Only exact builtin containers: rebuilding a subclass would change how
    # Prefect hashes it even when no spec is inside.
    if type(value) is dict:
        items = {k: _keyed(v) for k, v in value.items()}
        changed = any(items[k] is not v for k, v in value.items())
        return items if changed else value
    if type(value) in (list, tuple):
        parts = [_keyed(v) for v in value]
        changed = any(p is not v for p, v in zip(parts, value, strict=True))
        return type(value)(parts) if changed else value
    return value


SPEC_INPUTS = SpecInputs()
"""Inputs with specs keyed by `cache_key()`; compose with TASK_SOURCE, RUN_ID, `.configure()`."""

SPEC_DEFAULT = SPEC_INPUTS + TASK_SOURCE + RUN_ID
"""Prefect's default policy (INPUTS + TASK_SOURCE + RUN_ID) with spec-aware inputs."""

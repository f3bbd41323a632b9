"""The registry in the Prefect UI: a table artifact of one process's registry.

`publish_stats()` in a flow or task; bound runners (`bind_to_workers`) call
`publish_at_worker_end` as each worker stops, so every worker's table is on the
flow run's Artifacts tab.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import warnings
from types import FrameType
from typing import Any, cast
from uuid import UUID

from handles._registry import registry

__all__ = ["flow_run_and_settings", "publish_at_worker_end", "publish_stats", "stats_rows"]

logger = logging.getLogger("handles")

KEY_CHARS = 12  # as the registry's log lines print a key
MAX_FRAMES = 30  # how far up the stack to look for the run Prefect is submitting


def stats_rows() -> list[dict[str, Any]]:
    """One row per cache key of this process's registry, as the artifact shows it."""
    host, pid = socket.gethostname(), os.getpid()
    rows = []
    for key, stats in sorted(registry().stats().items(), key=lambda item: (item[1].kind, item[0])):
        rows.append(
            {
                "kind": stats.kind,
                "key": key[:KEY_CHARS],
                "builds": stats.builds,
                "hits": stats.hits,
                "errors": stats.errors,
                "live": stats.live,
                "bytes": stats.nbytes + sum(stats.device_nbytes.values()),
                "build seconds": round(stats.build_seconds, 3),
                "host": host,
                "pid": pid,
            }
        )
    return rows


def publish_stats(
    key: str | None = None, *, description: str | None = None, flow_run_id: Any = None
) -> UUID | None:
    """Publish this process's registry as a Prefect table artifact; its id, or None if empty.

    Call it in a flow or task: the artifact belongs to that run (its Artifacts
    tab). Columns: kind, key (first 12 characters), builds, hits, errors, live,
    bytes (host and devices), build seconds, host, pid.

    key: an artifact key (lowercase letters, digits, dashes) to also list it on
        the Artifacts page, each call a new version; None: the run's only.
    flow_run_id: the run to attach it to, outside any run context.
    """
    from prefect.artifacts import TableArtifact  # noqa: PLC0415  (the prefect extra)

    rows = stats_rows()
    if not rows:
        return None
    host, pid = socket.gethostname(), os.getpid()
    artifact = TableArtifact(
        table=rows,
        key=key,
        description=description or f"handles registry on {host}, process {pid}",
        flow_run_id=flow_run_id,
    )
    with warnings.catch_warnings():
        # Outside a run context Prefect warns even when the run is named.
        warnings.simplefilter("ignore", FutureWarning)
        created: Any = artifact.create(_sync=True)  # type: ignore[call-arg]
    return cast(UUID, created.id)


def publish_at_worker_end(flow_run_id: Any, prefect_env: dict[str, str]) -> None:
    """A stopping worker's registry, on the flow run that used it. Never raises.

    Runs at a worker process's exit, outside any run, so with the settings the
    runner had when it started the worker (`prefect_env`, as Prefect's own
    `to_environment_variables()` gives them; this process's environment wins,
    as it does for Prefect's task runs).
    """
    if flow_run_id is None:
        return
    try:
        from prefect.context import SettingsContext, get_settings_context  # noqa: PLC0415
        from prefect.settings import Settings  # noqa: PLC0415

        os.environ.update({k: v for k, v in prefect_env.items() if k not in os.environ})
        # At exit no thread can start, so Prefect's client cannot send the
        # "artifact created" event that follows the artifact (the artifact
        # itself is stored): keep its error out of the worker's output.
        events = logging.getLogger("prefect.events.utilities")
        level, events.level = events.level, logging.CRITICAL
        try:
            with SettingsContext(profile=get_settings_context().profile, settings=Settings()):
                publish_stats(flow_run_id=flow_run_id)
        finally:
            events.setLevel(level)
    except Exception:  # a worker going away must not fail on its report
        logger.warning("publishing this worker's registry stats failed", exc_info=True)


def flow_run_and_settings() -> tuple[Any, dict[str, str]]:
    """(this flow run's id, Prefect's settings as environment variables); (None, {}) outside.

    Prefect's process pool hands runs to its executor, which starts workers,
    from a helper thread without the run's context; that thread's caller holds
    the context and environment Prefect serialized for the run (`context`,
    `env`), read here when the thread has no context of its own.
    """
    from prefect.context import FlowRunContext  # noqa: PLC0415
    from prefect.settings import get_current_settings  # noqa: PLC0415

    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if run is not None:
        return run.id, get_current_settings().to_environment_variables(exclude_unset=True)
    frame: FrameType | None = sys._getframe(1)
    for _ in range(MAX_FRAMES):
        if frame is None:
            break
        serialized, env = frame.f_locals.get("context"), frame.f_locals.get("env")
        if isinstance(serialized, dict) and isinstance(env, dict):
            flow_run = (serialized.get("flow_run_context") or {}).get("flow_run") or {}
            if flow_run.get("id") is not None:
                return flow_run["id"], {str(k): str(v) for k, v in env.items()}
        frame = frame.f_back
    return None, {}

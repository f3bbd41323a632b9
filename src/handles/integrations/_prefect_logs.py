"""The registry's log lines (builds, evictions, teardown failures) in Prefect's run logs."""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_run_logger

__all__ = ["route_registry_logs"]


class _RunLogRouter(logging.Filter):
    """Moves a record logged inside a Prefect run to that run's log, and no further.

    A filter on the `handles` logger, not a handler: a handler would add the run
    log's copy while the record still went on to the root logger's handlers,
    and Prefect's console would print every line twice (the run logger's copy
    reaches the root handlers too). Outside a run (a warm-up, for one) there is
    no run log to join: the record goes on as usual.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if TaskRunContext.get() is None and FlowRunContext.get() is None:
            return True
        try:
            run_logger = get_run_logger()
            run_logger.log(record.levelno, "%s", record.getMessage(), exc_info=record.exc_info)
        except Exception:
            return True  # the line must not be lost: let it go on as it came
        return False


def route_registry_logs(level: int = logging.INFO) -> None:
    """Send the registry's lines (builds, evictions, teardown failures) to Prefect's run logs.

    Call it once per process: in the flow's process for thread pools, and in
    each worker for process pools and Dask (`warm_up` and `SpecWarmUp` do). A
    line logged inside a task run is attached to that task run (and reaches the
    root logger's handlers, Prefect's console among them, once, as that run's
    line); a line logged outside any run goes on to them as it is. Idempotent.
    """
    handles_logger = logging.getLogger("handles")
    if handles_logger.level == logging.NOTSET or handles_logger.level > level:
        handles_logger.setLevel(level)
    if not any(isinstance(f, _RunLogRouter) for f in handles_logger.filters):
        handles_logger.addFilter(_RunLogRouter())

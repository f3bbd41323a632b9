"""The registry's log lines (builds, evictions, teardown failures) in Prefect's run logs."""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_run_logger

__all__ = ["route_registry_logs"]


class _RunLogHandler(logging.Handler):
    """Forwards records to the current Prefect run's logger; drops them outside a run."""

    def emit(self, record: logging.LogRecord) -> None:
        if TaskRunContext.get() is None and FlowRunContext.get() is None:
            return  # warm-up and other work outside a run has no run log to join
        try:
            run_logger = get_run_logger()
            run_logger.log(record.levelno, "%s", record.getMessage(), exc_info=record.exc_info)
        except Exception:
            self.handleError(record)


def route_registry_logs(level: int = logging.INFO) -> None:
    """Send the registry's lines (builds, evictions, teardown failures) to Prefect's run logs.

    Call it once per process: in the flow's process for thread pools, and in
    each worker for process pools and Dask (`warm_up` and `SpecWarmUp` do). A
    line logged inside a task run is attached to that task run. Idempotent.
    """
    handles_logger = logging.getLogger("handles")
    if handles_logger.level == logging.NOTSET or handles_logger.level > level:
        handles_logger.setLevel(level)
    if not any(isinstance(h, _RunLogHandler) for h in handles_logger.handlers):
        handles_logger.addHandler(_RunLogHandler(level))

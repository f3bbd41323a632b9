"""Import optional packages where they are used, with an install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from handles.exceptions import MissingDependencyError


def require(module: str, extra: str, *, kind: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingDependencyError naming `handles[extra]`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # Only a missing top-level package is "not installed"; a broken install
        # of a present package should surface as itself.
        missing = getattr(exc, "name", None)
        if missing is not None and module.split(".", maxsplit=1)[0] != missing.split(".")[0]:
            raise
        raise MissingDependencyError(module.split(".", maxsplit=1)[0], extra, kind=kind) from exc

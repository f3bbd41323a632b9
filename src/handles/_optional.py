"""Import optional packages where they are used, with an install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from handles.exceptions import MissingDependencyError

__all__ = ["require"]


def require(
    module: str,
    extra: str | None = None,
    *,
    install: str | None = None,
    kind: str | None = None,
) -> ModuleType:
    """Import `module`, or raise MissingDependencyError saying what to install.

    Call it inside `build()`, so that defining or naming a kind imports nothing heavy::

        faiss = handles.require("faiss", install="faiss-cpu", kind="VectorIndexSpec")

    extra: one of handle-specs' extras ("sql", "torch", ...), for the hint
        `pip install "handle-specs[extra]"`.
    install: what to install otherwise (a requirement: "faiss-cpu",
        "mypackage[gpu]"); with neither, the hint names the module's top-level package.
    kind: the spec kind that needs it, named in the message.

    Only a missing package is reported this way: an installed package that fails
    to import raises its own error.
    """
    top = module.split(".", maxsplit=1)[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing is not None and top != missing.split(".")[0]:
            raise
        raise MissingDependencyError(top, extra, kind=kind, install=install) from exc

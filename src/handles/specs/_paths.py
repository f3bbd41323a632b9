"""One path rule for every kind: local paths resolve where the spec is validated.

A spec stores the absolute, normalized, user-expanded path, so the same file
named from two working directories (`a.db`, `./a.db`, `x/../a.db`) is one key,
and a worker with another working directory opens the same file. Nothing here
touches the filesystem: symlinks are not resolved, and a second spelling through
a link only costs a cache miss.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

__all__ = ["LocalPath", "PathStr", "absolute", "fspath", "looks_local"]


def fspath(value: Any) -> Any:
    """A pathlib path as its string; anything else unchanged (pydantic reports wrong types)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def absolute(value: str) -> str:
    """The path rule: absolute, normalized, `~` expanded. Refuses NUL and "".

    Separators become "/" where the system has another (Windows); on POSIX a
    backslash is an ordinary character of a file name and stays one.
    """
    if not value.strip():
        raise ValueError("is empty: give a path")
    if "\0" in value:
        raise ValueError("contains a NUL character")
    return os.path.abspath(os.path.expanduser(value)).replace(os.sep, "/")


def looks_local(value: str) -> bool:
    """True when `value` names a local path rather than a package or hub name.

    Absolute, `~`, `.`-relative or existing here: the same test transformers
    applies to a model name, made once, where the spec is validated.
    """
    return (
        os.path.isabs(os.path.expanduser(value))
        or value.startswith((".", "~"))
        or os.path.exists(value)
    )


PathStr = Annotated[str, BeforeValidator(fspath)]
"""A str field that also takes pathlib paths (stored, dumped and keyed as the string)."""

LocalPath = Annotated[str, BeforeValidator(fspath), AfterValidator(absolute)]
"""A local path field, stored by the path rule above."""

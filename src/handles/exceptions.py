"""Errors raised by handles.

    HandlesError
    ├── SpecError (also ValueError)             a spec's configuration is invalid
    ├── BuildError                              building the live object failed
    ├── MissingDependencyError (also ImportError)  an optional package is not installed
    ├── LockTimeout (also TimeoutError)         a lock was not free within its bound
    └── PreflightError (also TypeError)         task inputs a runner cannot send or hash

Every message names the spec kind (and the field where there is one), so a
failure inside a worker process can be traced back to the configuration that
caused it without reading a dependency's traceback. On every error `.kind` is
that name as messages show it: the spec's class name ("SqliteSpec"); the kind's
registered name is `.spec.kind` where the error carries the spec.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "BuildError",
    "HandlesError",
    "LockTimeout",
    "MissingDependencyError",
    "PreflightError",
    "SpecError",
]

# The name on the package index (`handles` there is an unrelated project); the
# import name is `handles`. Install hints name its extras: "handle-specs[sql]".
DISTRIBUTION = "handle-specs"


class HandlesError(Exception):
    """Root of every error raised by handles."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Workers send errors back pickled (Dask, Ray, process pools), and these
        # constructors take more than the message: rebuild from the state instead.
        state = dict(self.__dict__)
        if isinstance(self, ImportError):  # kept by ImportError outside __dict__
            state.update(name=self.name, path=self.path)
        return (_restored, (type(self), self.args), state)


def _restored(cls: type[HandlesError], args: tuple[Any, ...]) -> HandlesError:
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class SpecError(HandlesError, ValueError):
    """A spec's configuration is invalid.

    `problems` holds one `(field, message)` pair per problem; field is `""` when
    the problem is not about one field.
    """

    def __init__(self, kind: str, problems: Sequence[tuple[str, str]]) -> None:
        self.kind = kind
        self.problems = list(problems)
        lines = [f"{kind}.{field}: {msg}" if field else f"{kind}: {msg}" for field, msg in problems]
        super().__init__("\n  ".join(lines))

    @classmethod
    def one(cls, kind: str, field: str, message: str) -> SpecError:
        return cls(kind, [(field, message)])

    @classmethod
    def from_validation(cls, kind: str, exc: ValidationError) -> SpecError:
        problems: list[tuple[str, str]] = []
        for err in exc.errors(include_url=False):
            inner = err.get("ctx", {}).get("error")
            if isinstance(inner, SpecError):
                # Raised by a spec's own __init__, which pydantic runs inside
                # model_validate: keep its problems rather than wrapping them.
                problems.extend(inner.problems)
                continue
            field = ".".join(str(part) for part in err["loc"])
            message = err["msg"]
            # pydantic prefixes messages of ValueErrors raised in validators.
            message = message.removeprefix("Value error, ")
            problems.append((field, _without_input(message, err)))
        return cls(kind, problems)


# Shorter values are left: too likely to be words of the message itself ("cpu").
_ECHO_MIN_CHARS = 4


def _without_input(message: str, error: Mapping[str, Any]) -> str:
    """`message` with the field's values cut out, should a validator have quoted one.

    Validation errors never echo input (it may hold a secret), and not every kind's
    validators are ours. Only for a field's error: a model-wide one's input is the
    whole document, whose every value could match the message's own words.
    """
    if not error.get("loc"):
        return message
    values: list[str] = []
    stack, seen = [error.get("input")], 0
    while stack and seen < 1000:  # bounded: inputs may be huge or deep
        item = stack.pop()
        seen += 1
        if isinstance(item, Mapping):
            stack.extend(item.values())  # keys are names (a pragma, an option): kept
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif isinstance(item, str | int | float) and not isinstance(item, bool):
            text = str(item)
            if len(text) >= _ECHO_MIN_CHARS:
                values.append(text)
    for text in sorted(set(values), key=len, reverse=True):
        message = message.replace(text, "...")
    return message


class BuildError(HandlesError):
    """Building a spec's live object failed; the original error is chained.

    The message holds the spec's redacted repr, never a secret value.
    """

    def __init__(self, message: str, *, kind: str, spec: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.spec = spec
        # On a cluster the same spec builds on many machines: say which one failed
        # (in tracebacks and logs; the message stays the same everywhere).
        self.add_note(f"raised on host {socket.gethostname()}, process {os.getpid()}")

    @classmethod
    def about(cls, spec: Any, message: str) -> BuildError:
        """A BuildError for `spec`, labelled as every error is: by the spec's class name."""
        return cls(message, kind=type(spec).__name__, spec=spec)

    @classmethod
    def for_spec(cls, spec: Any, cause: BaseException) -> BuildError:
        detail = str(cause).strip() or type(cause).__name__
        if not detail.startswith(type(cause).__name__):
            detail = f"{type(cause).__name__}: {detail}"
        return cls.about(spec, f"could not build {spec!r}: {detail}")

    def again(self) -> BuildError:
        """A fresh copy for another waiter, so threads never share one traceback."""
        copy = BuildError(str(self), kind=self.kind, spec=self.spec)
        copy.__cause__ = self.__cause__
        return copy


class MissingDependencyError(HandlesError, ImportError):
    """An optional package needed by a spec kind is not installed.

    The message says what to install: `pip install "handle-specs[extra]"` for one
    of this library's extras, or `install` (a requirement such as "faiss-cpu" or
    "mypackage[gpu]") for packages of a third-party kind.
    """

    def __init__(
        self,
        package: str,
        extra: str | None = None,
        *,
        kind: str | None = None,
        install: str | None = None,
    ) -> None:
        who = f"{kind} needs" if kind else "this feature needs"
        if install is None:
            install = f"{DISTRIBUTION}[{extra}]" if extra is not None else package
        super().__init__(f'{who} {package}: pip install "{install}"', name=package)
        self.package = package
        self.extra = extra
        self.kind = kind
        self.install = install


class LockTimeout(HandlesError, TimeoutError):
    """A lock handles queues on (SQLite's writer queue) was not free within its bound.

    The message names the spec and, where known, the process holding the lock.
    """

    def __init__(self, message: str, *, kind: str, holder_pid: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.holder_pid = holder_pid


class PreflightError(HandlesError, TypeError):
    """Task inputs that the runner cannot send or Prefect cannot hash. `findings` lists each.

    Raised by `handles.integrations.prefect.preflight`; each finding
    (`handles.integrations.preflight.Finding`) names the path to the offending object.
    """

    def __init__(self, label: str, findings: Sequence[Any]) -> None:
        self.label = label
        self.findings = list(findings)
        lines = "\n  ".join(str(f) for f in self.findings)
        count = len(self.findings)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{label}: {count} {noun} in its inputs:\n  {lines}")

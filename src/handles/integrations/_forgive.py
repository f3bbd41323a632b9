"""Forgiveness: a live object the registry built travels as its spec, arrives as the worker's own.

Passing `db.get()` to a task where `db` belongs is the mistake handles exists to
prevent. When this process's registry built the object, it knows the spec that
built it (`registry().spec_of`), so the call can be mended instead of refused:
the argument becomes `AsLive(spec)`, which pickles and hashes as the spec does,
and the task function, wrapped by `resolving`, receives `spec.get()` made where
it runs (its process, its thread, its event loop for async tasks of
loop-scoped kinds). Objects the registry did not build are never touched.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handles._registry import registry
from handles._spec import Spec

__all__ = ["AsLive", "can_resolve", "lent_spec", "resolving"]

# Marks a function `resolving` made, so that wrapping twice is a no-op.
WRAPPED_MARK = "__handles_resolves_as_live__"


@dataclass(frozen=True)
class AsLive:
    """A spec sent in place of the live object it built: the task receives `spec.get()`.

    A cache policy that keys specs (SPEC_INPUTS) keys it exactly as the spec.
    """

    spec: Spec[Any]

    def __repr__(self) -> str:
        return f"AsLive({self.spec!r})"


def lent_spec(value: Any) -> Spec[Any] | None:
    """The spec whose live object `value` is in this process's registry; None if none."""
    if value is None or isinstance(value, str | bytes | int | float | bool | Spec | AsLive):
        return None
    return registry().spec_of(value)


def can_resolve(fn: Callable[..., Any]) -> bool:
    """Can `resolving(fn)` stand in for `fn`? (Generators keep their own shape: not wrapped.)"""
    return not (inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn))


def resolving(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, receiving each top-level `AsLive(spec)` argument as the live object built here.

    Same signature, name and source as `fn` (`inspect` follows `__wrapped__`), so
    Prefect binds parameters, names runs and hashes the task source as before.
    """
    if getattr(fn, WRAPPED_MARK, False) or not can_resolve(fn):
        return fn
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def resolve_async(*args: Any, **kwargs: Any) -> Any:
            args = tuple([await _aresolved(a) for a in args])
            kwargs = {name: await _aresolved(v) for name, v in kwargs.items()}
            return await fn(*args, **kwargs)

        return _marked(resolve_async, fn)

    @functools.wraps(fn)
    def resolve(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_resolved(a) for a in args)
        kwargs = {name: _resolved(v) for name, v in kwargs.items()}
        return fn(*args, **kwargs)

    return _marked(resolve, fn)


def _marked(wrapper: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    """`wrapper` with a code object of its own, naming `fn`.

    Prefect keys a task by its function's name and a hash of its code object;
    every wrapper shares one code object, so two wrapped functions of one name
    would share a key (and a task worker serving both would mix them up). One
    unused constant naming `fn` (module, name, file and line, bytecode) keeps the
    keys apart, the same in every process; the wrapper runs as before.
    """
    code = wrapper.__code__
    original = getattr(fn, "__code__", None)
    where = f"{original.co_filename}:{original.co_firstlineno}" if original is not None else ""
    digest = hashlib.sha256(original.co_code if original is not None else b"").hexdigest()
    tag = f"handles-resolves:{fn.__module__}.{fn.__qualname__}:{where}:{digest[:16]}"
    wrapper.__code__ = code.replace(co_consts=(*code.co_consts, tag))
    setattr(wrapper, WRAPPED_MARK, True)
    return wrapper


def _resolved(value: Any) -> Any:
    return value.spec.get() if isinstance(value, AsLive) else value


async def _aresolved(value: Any) -> Any:
    if not isinstance(value, AsLive):
        return value
    # A loop-scoped object belongs to this run's event loop: aget() builds it here.
    return await value.spec.aget() if value.spec.scope == "loop" else value.spec.get()

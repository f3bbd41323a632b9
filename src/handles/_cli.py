"""The command line: look at specs without writing Python.

    handles inspect SPEC_JSON_OR_FILE   kind, identity and placement fields, key, redacted repr
    handles schema KIND                 the kind's JSON schema
    handles kinds                       every known kind and what it needs installed
    handles check MODULE:FUNCTION       preflight a call's arguments (see `handles check --help`)

Errors print one line naming the problem and exit with status 2; no tracebacks.
A reader that closes the pipe early (`| head`) ends the command quietly with status 141.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from handles._kinds import known_kinds, load_kind, spec_from_json
from handles.exceptions import HandlesError

# The CLI sits on top of everything, so it may reach into the integrations.
from handles.integrations.preflight import check_inputs

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

# 128 + SIGPIPE (13 on every POSIX system): what a shell reports for `yes | head -1`.
_SIGPIPE_STATUS = 141


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        try:
            args = parser.parse_args(argv)
            return int(args.run(args))
        finally:
            # Flush here, not at exit, so a reader that left early is seen below.
            sys.stdout.flush()
    except BrokenPipeError:
        return _reader_left()
    except HandlesError as exc:
        return _fail(str(exc))
    except Exception as exc:  # bad input must never end in a traceback
        return _fail(f"{type(exc).__name__}: {exc}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.exit(_fail(f"{message} (see handles --help)"))

    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        # argparse drops write errors; a closed pipe must reach main() like any output.
        (file or sys.stdout).write(self.format_help())


def _reader_left() -> int:
    # `handles schema sqlite | head -3`: the reader closed the pipe, so stop quietly,
    # as `cat` does, with the status a shell gives a command ended by SIGPIPE.
    # Point stdout at /dev/null so the interpreter's flush at exit cannot fail again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (replaced, or closed)
        pass
    return _SIGPIPE_STATUS


def _fail(message: str) -> int:
    # One line, whatever the message holds (several problems, lone surrogates).
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"handles: {line}".encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="handles", description="Inspect handle specs, their schemas and task arguments."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    inspect = commands.add_parser(
        "inspect", help="show a spec's kind, fields, cache key and redacted repr"
    )
    inspect.add_argument("spec", help="the spec's JSON, or a file holding it ('-' for stdin)")
    inspect.add_argument("--json", action="store_true", help="print the result as JSON")
    inspect.set_defaults(run=_inspect)

    schema = commands.add_parser("schema", help="print a kind's JSON schema")
    schema.add_argument("kind", help="a kind name, e.g. sqlite (see `handles kinds`)")
    schema.set_defaults(run=_schema)

    kinds = commands.add_parser("kinds", help="list the kinds that can be loaded by name")
    kinds.set_defaults(run=_kinds)

    check = commands.add_parser(
        "check",
        help="preflight the arguments of a call before submitting it as a task",
        description=(
            "MODULE:FUNCTION names a function that takes no arguments and returns the arguments "
            "to check: a dict (keyword arguments), a list or tuple (positional), or a pair "
            "(args, kwargs). Reports every argument that cannot be pickled or hashed, with the "
            "path to the offending attribute and the spec to use instead. Exit status 1 if any."
        ),
    )
    check.add_argument("target", metavar="MODULE:FUNCTION")
    check.set_defaults(run=_check)
    return parser


def _read_spec_text(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    if source.lstrip().startswith("{"):
        return source
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        shown = repr(source if len(source) <= 80 else source[:77] + "...")
        raise HandlesError(f"{shown} is neither spec JSON nor a readable file ({reason})") from None


def _inspect(args: argparse.Namespace) -> int:
    spec = spec_from_json(_read_spec_text(args.spec))
    cls = type(spec)
    report: dict[str, Any] = {
        "kind": spec.kind,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "scope": spec.scope,
        "identity": spec.identity(),
        "placement": spec.placement(),
        "cache_key": spec.cache_key(),
        "repr": repr(spec),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    width = max(len(k) for k in report)
    for name, value in report.items():
        shown = json.dumps(value) if isinstance(value, dict) else value
        print(f"{name:<{width}}  {shown}")
    return 0


# What each role means, for fields whose kind gives no description of its own.
_ROLE_DESCRIPTIONS = {
    "identity": "identity: which object this is; part of cache_key()",
    "placement": "placement: how this process builds or uses it; not part of cache_key()",
}


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(_described_schema(load_kind(args.kind)), indent=2))
    return 0


def _described_schema(kind: Any) -> dict[str, Any]:
    """The kind's JSON schema, with a description and a default on every field that has one.

    pydantic writes neither a default made by a factory (`pragmas`, `connect_args`)
    nor a description the field was not given; a reader of the schema needs both.
    """
    schema: dict[str, Any] = kind.model_json_schema()
    for name, prop in schema.get("properties", {}).items():
        field = kind.model_fields.get(name)
        if field is None:
            continue
        role = prop.get("x-handles-role")
        if "description" not in prop and role in _ROLE_DESCRIPTIONS:
            prop["description"] = _ROLE_DESCRIPTIONS[role]
        if "default" not in prop and field.default_factory is not None:
            default = _factory_default(kind, name, field)
            if default is not None:
                prop["default"] = default
    return schema


def _factory_default(kind: Any, name: str, field: Any) -> Any:
    """What a field made by its factory holds once validated, as JSON; None if unknown.

    The value a spec really gets: SqliteSpec's `pragmas` factory gives {}, and its
    validator merges the default pragmas over it. Validators that need more than
    the value (other fields, validation info) are not run, and then nothing is shown.
    """
    from pydantic_core import to_jsonable_python  # noqa: PLC0415  (only for this command)

    try:
        value = field.get_default(call_default_factory=True, validated_data={})
        for decorator in kind.__pydantic_decorators__.field_validators.values():
            if name in decorator.info.fields and decorator.info.mode == "after":
                value = decorator.func(value)
        return to_jsonable_python(value)
    except Exception:
        return None


def _kinds(args: argparse.Namespace) -> int:
    for name, info in sorted(known_kinds().items()):
        print(f"{name:<16} {info.target:<48} {info.needs()}".rstrip())
    return 0


def _check(args: argparse.Namespace) -> int:
    module_name, _, attr = args.target.partition(":")
    if not module_name or not attr:
        raise HandlesError(f"expected MODULE:FUNCTION, got {args.target!r}")
    sys.path.insert(0, ".")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise HandlesError(f"cannot load {args.target}: {exc}") from None
    call_args, call_kwargs = _as_call(function())
    problems = check_inputs(call_args, call_kwargs)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{args.target}: every argument can be pickled and hashed")
    return 1 if problems else 0


def _as_call(value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(value, dict):
        return (), dict(value)
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], list | tuple)
        and isinstance(value[1], dict)
    ):
        return tuple(value[0]), dict(value[1])
    if isinstance(value, list | tuple):
        return tuple(value), {}
    raise HandlesError(
        "the function must return a dict, a list/tuple, or (args, kwargs); "
        f"got {type(value).__name__}"
    )

"""Allow-lists: what a spec read from data may carry, declared by each kind.

A spec made in Python code may use every option a driver or filesystem takes.
A spec validated from data (see handles._trust) may use only what its kind
declares here, next to its fields, as safe: options that cannot name a host,
a credential, a local file or code. Everything else is refused with one
SpecError naming the kind, the field, the key and the setting that allows it.

The declarations:

- `Driver`: for one SQLAlchemy dialect+driver, the URL query and `connect_args`
  keys a spec from data may use, and the keys that name hosts or hold a whole
  connection string (checked as the driver reads them, when a worker allows them).
- `Protocol`: for one fsspec protocol, the `storage_options` keys (dotted for
  nested ones) a spec from data may use, the options naming the endpoint, the
  options a secret reference may fill, and the host requests go to by default.
- `FromData`: a kind's whole declaration, the ClassVar `from_data` of its class.

The worker widens them deliberately:

    HANDLES_ALLOW_OPTIONS=database:sslrootcert,file:s3.config_kwargs.*,file:sftp
        options (kind:key), undeclared drivers (kind:dialect+driver) and
        protocols (file:protocol) a spec from data may use; fnmatch patterns
    HANDLES_ALLOW_PATHS=/data/*,/models/*
        local paths a spec from data may name (unset: any path)
    HANDLES_ALLOW_ARCHIVES=1
        TorchScript / torch.export archives (programs for torch's interpreter)

Nothing here imports a driver or fsspec: specs are validated without them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

__all__ = [
    "ALLOW_ARCHIVES",
    "ALLOW_OPTIONS",
    "ALLOW_PATHS",
    "Driver",
    "FromData",
    "Protocol",
    "UNKNOWN_HOST",
    "allow_table",
    "allowed",
    "archives_allowed",
    "canonical_host",
    "conninfo_params",
    "declared_paths",
    "host_matches",
    "path_problems",
    "refused",
    "setting_patterns",
    "split_hosts",
]

ALLOW_OPTIONS = "HANDLES_ALLOW_OPTIONS"
ALLOW_PATHS = "HANDLES_ALLOW_PATHS"
ALLOW_ARCHIVES = "HANDLES_ALLOW_ARCHIVES"

FROM_JSON = "a spec from JSON (untrusted input)"

# A host the spec's data cannot determine (a libpq service file, no host at all):
# allowed by no pattern, since nobody can tell where a connection would go.
UNKNOWN_HOST = "<not determined by the spec>"


@dataclass(frozen=True)
class Driver:
    """What a database URL of one dialect+driver may carry from data."""

    names: tuple[str, ...]
    """dialect+driver names, e.g. ("postgresql+psycopg", "postgresql+psycopg_async")."""
    keys: frozenset[str]
    """URL query and connect_args keys that name no host, credential, file or code."""
    host_keys: frozenset[str] = frozenset()
    """Keys that name hosts (comma-separated lists, as libpq reads them)."""
    conninfo_keys: frozenset[str] = frozenset()
    """Keys whose value is a whole connection string (libpq key=value or URI)."""
    unknown_keys: frozenset[str] = frozenset()
    """Keys that send the connection where the worker's files say (a libpq service)."""
    local: bool = False
    """The database is a local file (SQLite): its path is checked, not a host."""
    values: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Allowed keys whose values are limited too: `sslmode` may not turn TLS off."""


@dataclass(frozen=True)
class Protocol:
    """What a FileSpec of one fsspec protocol may carry from data."""

    names: tuple[str, ...]
    options: frozenset[str] = frozenset()
    """storage_options keys, dotted for nested ones ("client_kwargs.region_name")."""
    endpoints: Mapping[str, str] = field(default_factory=dict)
    """Options that name where requests go -> a template for the host ("{}" is the value)."""
    secrets: frozenset[str] = frozenset()
    """Options a secret reference (`secrets=`) may fill."""
    url_host: bool = True
    """The URL's host (for object stores, the bucket) counts as a host."""
    default_host: str | None = None
    """Where requests go when no endpoint option is given."""
    local: bool = False
    """Local files: the path is checked against HANDLES_ALLOW_PATHS."""


@dataclass(frozen=True)
class FromData:
    """A kind's declaration of what a spec of it read from data may carry."""

    paths: tuple[str, ...] = ()
    """Fields that may hold a local path (limited by HANDLES_ALLOW_PATHS)."""
    drivers: tuple[Driver, ...] = ()
    protocols: tuple[Protocol, ...] = ()
    options: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Free-form dict fields -> the keys allowed in them from data."""
    loaders: str = ""
    """What the kind loads from data, in words (model kinds: tensors only)."""
    hosts: str = ""
    """The hosts the kind contacts, in words, where no driver or protocol says."""

    def driver(self, name: str) -> Driver | None:
        return next((d for d in self.drivers if name in d.names), None)

    def protocol(self, name: str) -> Protocol | None:
        return next((p for p in self.protocols if name in p.names), None)


# -- the worker's settings -------------------------------------------------------------


def setting_patterns(name: str) -> list[str]:
    """The comma-separated patterns of setting `name`, read now."""
    raw = os.environ.get(name, "")
    return [p.strip() for p in raw.replace("\n", ",").split(",") if p.strip()]


def allowed(kind: str, name: str) -> bool:
    """Does HANDLES_ALLOW_OPTIONS let a spec of `kind` from data use `name`?"""
    for pattern in setting_patterns(ALLOW_OPTIONS):
        want_kind, sep, want = pattern.partition(":")
        if sep and want_kind == kind and fnmatchcase(name.lower(), want.lower()):
            return True
    return False


def refused(kind: str, what: str, name: str, declared: Iterable[str]) -> str:
    """The message for `name`, which a spec of `kind` from data may not use."""
    listed = ", ".join(sorted(declared)) or "nothing"
    key = name.partition("=")[0]
    return (
        f"{FROM_JSON} may not use {what + ' ' if what else ''}{name!r} (allowed from data: "
        f"{listed}): allow it on the worker with {ALLOW_OPTIONS}={kind}:{key}"
    )


def archives_allowed() -> bool:
    return os.environ.get(ALLOW_ARCHIVES, "").strip().lower() in ("1", "true", "yes")


# -- hosts -----------------------------------------------------------------------------

# What a host may look like: a DNS name, an IPv4 or bracketless IPv6 address (with a
# zone), or a Unix socket folder. Anything else (spaces, NUL, '@') is refused as
# written rather than guessed at: resolvers disagree about such names.
_HOST_TEXT = re.compile(r"[A-Za-z0-9._~%:\-/\[\]]+")


def canonical_host(host: str) -> str:
    """`host` as a resolver reads it: numeric IPv4 forms as dotted quads, IPv6 compressed.

    getaddrinfo (and so libpq, aiohttp, botocore) reads `2130706433`, `0x7f.1`,
    `127.1` and `0177.0.0.1` as 127.0.0.1; a host check must too.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.lower()
    if _IPV4_NUMERIC.fullmatch(text):
        try:
            return socket.inet_ntoa(socket.inet_aton(text))
        except OSError:
            return text
    try:
        address, _, zone = text.partition("%")
        compressed = ipaddress.IPv6Address(address).compressed
        return f"{compressed}%{zone}" if zone else compressed
    except ValueError:
        return text


# inet_aton's forms: one to four parts, each decimal, octal (0...) or hex (0x...).
_IPV4_NUMERIC = re.compile(r"(?:(?:0x[0-9a-f]+|[0-9]+)\.){0,3}(?:0x[0-9a-f]+|[0-9]+)")


def host_matches(host: str, pattern: str) -> bool:
    """Does `pattern` (from HANDLES_ALLOW_HOSTS) allow `host`?"""
    if host == UNKNOWN_HOST or not _HOST_TEXT.fullmatch(host):
        return False
    want = pattern.strip()
    if want.startswith("[") and want.endswith("]"):
        want = want[1:-1]
    have = canonical_host(host)
    if not any(c in want for c in "*?["):
        return have == canonical_host(want)
    if _ADDRESS_PATTERN.fullmatch(want) and not _DOTTED_QUAD.fullmatch(have):
        return False  # "10.*" names addresses: never the DNS name 10.evil.example
    return fnmatchcase(have, want.lower())


_ADDRESS_PATTERN = re.compile(r"[0-9.*?]+")
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


# -- libpq connection strings ----------------------------------------------------------

_CONNINFO_PAIR = re.compile(
    r"\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:'(?P<quoted>(?:[^'\\]|\\.)*)'|(?P<plain>\S*))"
)


def conninfo_params(text: str) -> list[tuple[str, str]] | None:
    """The (key, value) pairs libpq reads in a connection string, or None if it cannot.

    Both forms: `host=a password=b` (values may be quoted with '...') and
    `postgresql://user:pass@host1,host2/db?hostaddr=...`.
    """
    stripped = text.strip()
    if re.match(r"postgres(?:ql)?://", stripped, re.IGNORECASE):
        return _uri_params(stripped)
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(stripped):
        match = _CONNINFO_PAIR.match(stripped, position)
        if match is None:
            return None
        value = match["quoted"] if match["quoted"] is not None else match["plain"]
        pairs.append((match["key"].lower(), re.sub(r"\\(.)", r"\1", value)))
        position = match.end()
    return pairs


def _uri_params(uri: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl, unquote  # noqa: PLC0415  (only for URIs)

    rest = uri.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    authority = rest.split("/", 1)[0]
    userinfo, at, hosts = authority.rpartition("@")
    pairs: list[tuple[str, str]] = []
    if at and ":" in userinfo:
        pairs.append(("password", unquote(userinfo.split(":", 1)[1])))
    for item in hosts.split(","):
        host = item.rsplit(":", 1)[0] if not item.endswith("]") else item
        if host.strip("[]"):
            pairs.append(("host", unquote(host)))
    pairs += [(k.lower(), v) for k, v in parse_qsl(query, keep_blank_values=True)]
    return pairs


def split_hosts(value: Any) -> list[str]:
    """The hosts in a libpq host/hostaddr value: a comma-separated list; numbers as text.

    SQLAlchemy reads `?host=name:5432` (its multi-host form) as a host and a port, so a
    trailing `:digits` is a port, not part of the host (`[v6]:port` too).
    """
    hosts = []
    for item in str(value).split(","):
        host = item.strip()
        name, sep, port = host.rpartition(":")
        if sep and port.isdigit() and (":" not in name or name.startswith("[")):
            host = name
        if host:
            hosts.append(host)
    return hosts


# -- local paths -----------------------------------------------------------------------


def path_problems(fields: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(field, message) for each local path HANDLES_ALLOW_PATHS does not list.

    Unset, any path is allowed. The path as written (already absolute, by the
    path rule) and the file it resolves to through symlinks must both match.
    """
    patterns = setting_patterns(ALLOW_PATHS)
    if not patterns:
        return []
    problems = []
    for where, path in fields:
        if not os.path.isabs(path):
            continue
        real = os.path.realpath(path)
        if not all(any(fnmatchcase(p, want) for want in patterns) for p in (path, real)):
            problems.append(
                (
                    where,
                    f"{FROM_JSON} may not read the local path {path!r}: allow it on the "
                    f"worker with {ALLOW_PATHS} (now {','.join(patterns)!r})",
                )
            )
    return problems


def declared_paths(spec: Any) -> list[tuple[str, str]]:
    """(field, path) for each field the kind declares as a local path, where one is set."""
    declaration = getattr(type(spec), "from_data", None)
    if not isinstance(declaration, FromData):
        return []
    return [
        (name, value)
        for name in declaration.paths
        if isinstance(value := getattr(spec, name, None), str)
    ]


# -- the docs' table -------------------------------------------------------------------


def allow_table(kinds: Iterable[tuple[str, type]]) -> str:
    """docs/security.md's table: what each kind takes from data, from the declarations.

    `kinds` holds (kind name, class) pairs; a kind without a `from_data` declaration
    takes only its plain fields.
    """
    rows = [
        "| Kind | From data it may carry | Hosts checked | Widen with |",
        "|---|---|---|---|",
    ]
    for name, cls in kinds:
        declaration = getattr(cls, "from_data", None)
        label = f"`{cls.__name__}`"
        if not isinstance(declaration, FromData):
            rows.append(f"| {label} | its fields | none | |")  # pragma: no cover
            continue
        paths = ", ".join(f"`{p}`" for p in declaration.paths)
        path_note = f"local paths in {paths} (`{ALLOW_PATHS}`)" if paths else ""
        for driver in declaration.drivers:
            keys = (
                ", ".join(
                    f"`{k}`"
                    + (f" ({'/'.join(sorted(driver.values[k]))})" if k in driver.values else "")
                    for k in sorted(driver.keys)
                )
                or "no options"
            )
            hosts = (
                "the database file (`HANDLES_ALLOW_PATHS`)"
                if driver.local
                else (
                    "the URL's hosts; "
                    + (_codes(driver.host_keys | driver.conninfo_keys) or "none")
                    + " when allowed"
                )
            )
            rows.append(
                f"| {label} `{'`, `'.join(driver.names)}` | query and `connect_args`: {keys} "
                f"| {hosts} | `{ALLOW_OPTIONS}={name}:KEY` |"
            )
        for protocol in declaration.protocols:
            options = _codes(protocol.options) or "no options"
            secrets = _codes(protocol.secrets)
            carried = f"`storage_options`: {options}" + (
                f"; `secrets`: {secrets}" if secrets else ""
            )
            where = [*(["the URL's host"] if protocol.url_host else [])]
            where += [f"`{k}`" for k in sorted(protocol.endpoints)]
            if protocol.default_host:
                where.append(f"else `{protocol.default_host}`")
            if protocol.local:
                where = [f"the path (`{ALLOW_PATHS}`)"]
            rows.append(
                f"| {label} `{'`, `'.join(protocol.names)}` | {carried} "
                f"| {', '.join(where) or 'none'} "
                f"| `{ALLOW_OPTIONS}={name}:{protocol.names[0]}.KEY` |"
            )
        if not declaration.drivers and not declaration.protocols:
            carried = "; ".join(
                [f"`{f}`: {_codes(keys)}" for f, keys in declaration.options.items()]
                + ([declaration.loaders] if declaration.loaders else [])
                + ([path_note] if path_note else [])
            )
            widen = f"`{ALLOW_OPTIONS}={name}:KEY`" if declaration.options else ""
            hosts = declaration.hosts or "none"
            rows.append(f"| {label} | {carried or 'its fields'} | {hosts} | {widen} |")
    return "\n".join(rows)


def _codes(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(names))

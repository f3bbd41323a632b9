"""What the SQLAlchemy kinds share, so that no kind imports another.

- `_EngineSpec`: the fields, validation, trust checks, masking, connection budget,
  engine options and connect URL of DatabaseSpec and AsyncDatabaseSpec. Each
  kind subclasses it and says what it builds (an Engine, or an AsyncEngine per
  event loop). Its name starts with "_" and it declares no `kind`: a base for
  kinds, never loaded from JSON.
- `guard_against_fork`: a forked child gives every Engine built here (by these
  kinds and by `SqliteSpec.engine()`) a fresh pool. Registered with
  `handles._fork`, like every at-fork callback.
- `masked`: a URL with its password shown as `***`.

Nothing here imports SQLAlchemy: specs are made and validated without it, and
`build()` imports it through `handles._optional.require`.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Iterator
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Self, TypeVar

from pydantic import Field, ValidationInfo, field_serializer, field_validator

from handles import _fork
from handles._allow import (
    UNKNOWN_HOST,
    Driver,
    FromData,
    allowed,
    conninfo_params,
    path_problems,
    refused,
    split_hosts,
)
from handles._fields import Identity, Placement
from handles._secrets import MASK, SecretRef, holds_credential, parse_database_url
from handles._spec import Spec
from handles._trust import host_problems
from handles.exceptions import MissingDependencyError, SpecError

if TYPE_CHECKING:
    from sqlalchemy import URL, Engine

__all__ = ["guard_against_fork", "masked"]

E = TypeVar("E")

_SCHEME = re.compile(
    r"(?P<dialect>[A-Za-z][A-Za-z0-9_]*)(?:\+(?P<driver>[A-Za-z][A-Za-z0-9_]*))?://"
)
# SQLAlchemy's own dialects; others register through the "sqlalchemy.dialects" entry points.
_BUILTIN_DIALECTS = frozenset({"mariadb", "mssql", "mysql", "oracle", "postgresql", "sqlite"})
# Drivers that handles[sql] installs: a missing one is a broken install, not a wrong URL.
_SQL_EXTRA_DRIVERS = frozenset({"psycopg", "aiosqlite", "greenlet"})
# Names that carry a credential in a URL's query string or in connect_args: refused
# as literals, since those show in repr, JSON and the key.
_CREDENTIAL_ARGS = frozenset({"password", "passwd", "pwd", "sslpassword"})

# -- what a spec from data may carry (handles._allow), per driver ---------------------
# Keys that name no host, credential, local file or code. libpq's own keys for every
# PostgreSQL driver built on it; the host-bearing ones are checked as libpq reads them
# wherever a worker allows them (HANDLES_ALLOW_OPTIONS=database:hostaddr, say).
_LIBPQ_SAFE = frozenset(
    {
        "application_name",
        "channel_binding",
        "client_encoding",
        "connect_timeout",
        "gssencmode",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "load_balance_hosts",
        "require_auth",
        "sslmode",
        "target_session_attrs",
        "tcp_user_timeout",
    }
)
# libpq: host and hostaddr are comma-separated lists (hostaddr wins for the address);
# a whole connection string hides in psycopg's conninfo= and psycopg2's dsn=; a
# service sends the connection wherever the worker's pg_service.conf says.
_LIBPQ_HOSTS = frozenset({"host", "hostaddr"})
_LIBPQ_CONNINFO = frozenset({"conninfo", "dsn"})
_LIBPQ_UNKNOWN = frozenset({"service", "servicefile"})
# From data, these may make a connection stricter, never weaker (no TLS off, no downgrade).
_TLS_MODES = frozenset({"prefer", "require", "verify-ca", "verify-full"})
_LIBPQ_VALUES = {
    "sslmode": _TLS_MODES,
    "gssencmode": frozenset({"prefer", "require"}),
    "channel_binding": frozenset({"prefer", "require"}),
}
DRIVERS = (
    Driver(
        ("postgresql", "postgresql+psycopg", "postgresql+psycopg_async", "postgresql+psycopg2"),
        keys=_LIBPQ_SAFE,
        host_keys=_LIBPQ_HOSTS,
        conninfo_keys=_LIBPQ_CONNINFO,
        unknown_keys=_LIBPQ_UNKNOWN,
        values=_LIBPQ_VALUES,
    ),
    Driver(
        ("postgresql+asyncpg",),
        keys=frozenset({"command_timeout", "prepared_statement_cache_size", "ssl", "timeout"}),
        host_keys=frozenset({"host"}),
        conninfo_keys=frozenset({"dsn"}),
        unknown_keys=frozenset({"service", "passfile"}),
        values={"ssl": _TLS_MODES},
    ),
    Driver(
        ("sqlite", "sqlite+pysqlite", "sqlite+aiosqlite"),
        keys=frozenset({"check_same_thread", "timeout"}),
        local=True,
    ),
    Driver(
        ("mysql", "mysql+mysqldb", "mysql+pymysql", "mariadb", "mariadb+pymysql"),
        keys=frozenset({"charset", "connect_timeout", "read_timeout", "write_timeout"}),
        host_keys=frozenset({"host", "unix_socket"}),
        unknown_keys=frozenset({"read_default_file", "read_default_group"}),
    ),
)

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _EngineSpec(Spec[E], Generic[E]):
    """A database reached through SQLAlchemy: the part its sync and async kinds share."""

    _asyncio: ClassVar[bool] = False  # AsyncDatabaseSpec: asyncio drivers only
    from_data: ClassVar[FromData] = FromData(drivers=DRIVERS)
    """What a spec from data may carry: the URL's host and, per driver, the keys above."""

    url: Annotated[str, Identity]
    """A SQLAlchemy URL, dialect+driver://user@host:port/database."""
    password: Annotated[SecretRef | None, Placement] = None
    """Where the password lives: "env:NAME" or "file:/path"."""
    pool_size: Annotated[int, Placement, Field(ge=1)] = 5
    max_overflow: Annotated[int, Placement, Field(ge=0)] = 10
    pool_timeout: Annotated[Seconds, Placement] = 30.0
    """Seconds to wait for a free pooled connection before failing."""
    pool_recycle: Annotated[Seconds | None, Placement] = None
    """Reopen connections older than this many seconds (servers drop idle ones)."""
    pool_pre_ping: Annotated[bool, Placement] = True
    """Test each connection on checkout: a worker outlives server restarts."""
    max_connections: Annotated[int | None, Placement, Field(ge=1)] = None
    """Cap on connections over all `workers` processes together."""
    workers: Annotated[int | None, Placement, Field(ge=1)] = None
    """How many processes use this spec at once (for the budget and its warning)."""
    connect_args: Annotated[dict[str, str | int | float | bool], Placement] = Field(
        default_factory=dict
    )
    """Passed to the driver's connect(); no secrets here (use `password`)."""
    check_connection: Annotated[bool, Placement] = True
    """Connect once in build(), so a wrong URL fails at get() rather than later."""

    # -- validation -------------------------------------------------------------
    # Messages never echo the URL: it may hold a password.

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        if not url or any(c.isspace() for c in url):
            raise ValueError("must be a URL without spaces, e.g. postgresql+psycopg://user@host/db")
        match = _SCHEME.match(url)
        if match is None:
            raise ValueError(
                "must start with dialect+driver://, e.g. postgresql+psycopg:// or sqlite:///"
            )
        dialect = match["dialect"].lower()
        if not _dialect_known(dialect):
            builtin = ", ".join(sorted(_BUILTIN_DIALECTS))
            raise ValueError(
                f"unknown database dialect; SQLAlchemy has {builtin} "
                "and those installed packages register"
            )
        # Read as SQLAlchemy reads it (its own pattern), so the password masked
        # here is the one it sends: `u:#x@h`, `u:/x@h`, `u:12/x@h` included.
        parts = parse_database_url(url)
        if parts is None:
            raise ValueError("is not a URL SQLAlchemy can read")
        port = parts.port
        if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
            raise ValueError("has a port that is not a number from 0 to 65535")
        for name, value in parts.query:
            if name.lower() in _CREDENTIAL_ARGS or holds_credential(value):
                raise ValueError(_literal_credential(f"has {name}= in its query string", name))
        if parts.password == MASK:
            raise ValueError(
                f"has a masked password ({MASK}), as in a spec dumped to JSON: "
                "JSON never carries a plain password, so give it as a secret reference, "
                "password='env:NAME' or password='file:/path', and leave it out of the URL"
            )
        if dialect == "sqlite" and _sqlite_in_memory(url):
            raise ValueError(
                "is an in-memory SQLite database, private to each pooled connection; "
                "use SqliteSpec(memory='name') for one shared by a process"
            )
        return url

    @field_validator("password")
    @classmethod
    def _one_password(cls, value: SecretRef | None, info: ValidationInfo) -> SecretRef | None:
        url = info.data.get("url")
        parts = parse_database_url(url) if url is not None else None
        if value is not None and parts is not None and parts.password is not None:
            raise ValueError("is given twice: remove the password from the URL")
        return value

    @field_validator("connect_args")
    @classmethod
    def _no_literal_secrets(cls, args: dict[str, Any]) -> dict[str, Any]:
        for name in sorted(args):
            value = args[name]
            if name.lower() in _CREDENTIAL_ARGS or (
                isinstance(value, str) and holds_credential(value)
            ):
                raise ValueError(_literal_credential(f"holds {name!r}", name))
        return args

    def _untrusted_problems(self) -> list[tuple[str, str]]:
        # From JSON: the driver's declared keys only (handles._allow), hosts the
        # worker allows (HANDLES_ALLOW_HOSTS), and a secret reference only to a
        # host it named (handles._trust).
        driver, problems = self._driver_from_data()
        if driver is None:
            return problems
        for field, name, value in self._options():
            if allowed(self.kind, name):
                continue
            if name not in driver.keys:
                problems.append((field, refused(self.kind, "the option", name, driver.keys)))
            elif name in driver.values and str(value).lower() not in driver.values[name]:
                shown = f"{name}=..."  # never the value: errors do not echo input
                problems.append((field, refused(self.kind, "", shown, driver.values[name])))
        if driver.local:
            return problems + path_problems([("url", self._sqlite_path())])
        return problems + host_problems(
            self._hosts(driver), carries_secret=self.password is not None
        )

    def _driver_from_data(self) -> tuple[Driver | None, list[tuple[str, str]]]:
        match = _SCHEME.match(self.url)
        assert match is not None  # _valid_url checked it
        name = match[0].removesuffix("://").lower()
        driver = self.from_data.driver(name)
        if driver is not None:
            return driver, []
        if allowed(self.kind, name):  # the worker allows this driver: its URL host only
            return Driver((name,), frozenset()), []
        names = [n for d in self.from_data.drivers for n in d.names]
        return None, [("url", refused(self.kind, "the driver", name, names))]

    def _options(self) -> list[tuple[str, str, Any]]:
        """(field, key, value) for every option in the URL's query and connect_args."""
        parts = parse_database_url(self.url)
        found = [("url", name, value) for name, value in (parts.query if parts else ())]
        return found + [(f"connect_args.{k}", k, v) for k, v in self.connect_args.items()]

    def _hosts(self, driver: Driver) -> list[tuple[str, str]]:
        """(field, host) for every host a connection may go to, as the driver reads them.

        libpq's rules: the URL's host list, host= and hostaddr= lists from the query
        string and connect() arguments (they override the URL's, so all count), the
        same inside a whole connection string (conninfo=, dsn=), and no host at all
        (or a service) leaves the choice to the worker's environment: UNKNOWN_HOST.
        """
        parts = parse_database_url(self.url)
        found = [("url", h) for h in split_hosts(parts.host or "")] if parts else []
        for field, name, value in self._options():
            key = name.lower()
            if key in driver.host_keys:
                found += [(field, h) for h in split_hosts(value)]
            elif key in driver.unknown_keys:
                found.append((field, UNKNOWN_HOST))
            elif key in driver.conninfo_keys:
                params = conninfo_params(str(value))
                for inner, text in params if params is not None else [("", "")]:
                    if inner in driver.host_keys:
                        found += [(field, h) for h in split_hosts(text)]
                    elif params is None or inner in driver.unknown_keys:
                        found.append((field, UNKNOWN_HOST))
        if not found:
            found.append(("url", UNKNOWN_HOST))
        return found

    def _sqlite_path(self) -> str:
        rest = self.url.split("://", 1)[1].split("?", 1)[0]
        path = rest[1:] if rest.startswith("/") else rest
        return os.path.abspath(path) if path else path

    @field_validator("workers")
    @classmethod
    def _budget_fits(cls, workers: int | None, info: ValidationInfo) -> int | None:
        total = info.data.get("max_connections")
        if total is None:
            return workers
        if workers is None:
            raise ValueError(
                "is needed with max_connections: the budget is shared by that many "
                "processes (each gets max_connections // workers)"
            )
        if total < workers:
            raise ValueError(
                "exceeds max_connections: each of the processes needs at least one connection"
            )
        return workers

    # -- masking ----------------------------------------------------------------

    @field_serializer("url")
    def _masked_url(self, url: str) -> str:
        return masked(url)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, masked(value) if name == "url" else value

    def replace(self, **changes: Any) -> Self:
        # The dump masks a plain password; carry the real URL over unless replaced.
        changes.setdefault("url", self.url)
        return super().replace(**changes)

    # -- the budget -------------------------------------------------------------

    def pool_limits(self) -> tuple[int, int]:
        """(pool_size, max_overflow) each process's pool gets, after the budget."""
        if self.max_connections is None or self.workers is None:
            return self.pool_size, self.max_overflow
        per_process = self.max_connections // self.workers
        size = min(self.pool_size, per_process)
        return size, min(self.max_overflow, per_process - size)

    def connections_per_process(self) -> int:
        """The most connections one process's pool opens."""
        return sum(self.pool_limits())

    def _engine_options(self) -> dict[str, Any]:
        """Pool and driver options for create_engine (sync or async alike)."""
        size, overflow = self.pool_limits()
        return {
            "pool_size": size,
            "max_overflow": overflow,
            "pool_timeout": self.pool_timeout,
            "pool_recycle": -1 if self.pool_recycle is None else self.pool_recycle,
            "pool_pre_ping": self.pool_pre_ping,
            "connect_args": dict(self.connect_args),
        }

    def _over_server_limit(self, server_max: int, users: str) -> str | None:
        """The warning when `workers` pools (of `users`) may open more than the server allows."""
        count = self.workers or 1
        per_pool = self.connections_per_process()
        worst = count * per_pool
        if self.max_connections is not None or worst <= server_max:
            return None
        return (
            f"{self!r} may open {count} {users} x {per_pool} "
            f"connections (pool_size + max_overflow) = {worst}, but the server allows "
            f"{server_max}: set max_connections= (and workers=) to cap the total"
        )

    # -- building ---------------------------------------------------------------

    def _connect_url(self, sa: Any) -> URL:
        """The URL to connect to, as SQLAlchemy reads it, with the password resolved."""
        label = type(self).__name__
        try:
            url: URL = sa.make_url(self.url)
            dialect = url.get_dialect()
            if self._asyncio:
                # What create_async_engine loads: the dialect's asyncio form where it
                # has one (postgresql+psycopg: psycopg's async dialect), else itself.
                dialect = dialect.get_async_dialect_cls(url)
        except sa.exc.NoSuchModuleError:  # before ArgumentError, its base class
            raise SpecError.one(
                label,
                "url",
                f"SQLAlchemy has no dialect+driver {url.drivername!r}; "
                "check the spelling or install the package that provides it",
            ) from None
        except sa.exc.ArgumentError as exc:
            raise SpecError.one(label, "url", f"is not a valid URL: {exc}") from None
        ours = parse_database_url(self.url)
        if ours is None or (ours.password, ours.host) != (url.password, url.host):
            # Masking and the host policy read the URL with a copy of SQLAlchemy's
            # pattern; never connect where the two readings differ.
            raise SpecError.one(
                label,
                "url",
                f"SQLAlchemy {sa.__version__} reads this URL's password or host differently "
                "from handles: give the password as a secret reference",
            )
        if dialect.is_async and not self._asyncio:
            raise SpecError.one(
                label,
                "url",
                f"{url.drivername} is an asyncio driver; DatabaseSpec builds a synchronous "
                "Engine, so use a synchronous driver (postgresql+psycopg, not +asyncpg), "
                "or AsyncDatabaseSpec for an AsyncEngine",
            )
        if self._asyncio and not dialect.is_async:
            raise SpecError.one(
                label,
                "url",
                f"{url.drivername} is a synchronous driver; AsyncDatabaseSpec builds an "
                "AsyncEngine, so use an asyncio driver (postgresql+psycopg or +asyncpg, "
                "sqlite+aiosqlite), or DatabaseSpec for a synchronous Engine",
            )
        if self.password is not None:
            url = url.set(password=self.password.resolve(label, "password"))
        return url

    def _missing_driver(self, exc: ImportError) -> Exception:
        label = type(self).__name__
        package = (exc.name or "").split(".")[0]
        if package in _SQL_EXTRA_DRIVERS:
            return MissingDependencyError(package, "sql", kind=label)
        return SpecError.one(
            label,
            "url",
            f"needs the driver package {package or exc}, which is not installed "
            f"(pip install {package or '<driver>'})",
        )

    def _cannot_connect(self, exc: Any) -> SpecError:
        """The SpecError for a DBAPIError from the first connection (`exc.orig`: the driver's)."""
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return SpecError.one(
            type(self).__name__, "url", f"cannot connect to {masked(self.url)}: {detail}"
        )


# -- fork -------------------------------------------------------------------------


def guard_against_fork(engine: Engine) -> None:
    """In a forked child, give `engine` a fresh, empty pool, leaving the parent's alone.

    Using an inherited connection would interleave two processes on one socket;
    closing it would end the parent's session on the server. So after fork the
    child calls `engine.dispose(close=False)`, SQLAlchemy's documented recipe,
    and keeps the old pool referenced forever so that no garbage collection
    closes the parent's connections from the child. Done at fork time, not at
    checkout: `pool_pre_ping` would already have used the socket by then.
    """
    _engines.add(engine)


_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _fresh_pools_in_child() -> None:
    for engine in list(_engines):
        _fork.keep_forever(engine.pool)
        engine.dispose(close=False)


_fork.in_child(_fresh_pools_in_child)


# -- URLs -------------------------------------------------------------------------


def masked(url: str) -> str:
    """`url` with its password, if any, shown as `***` (as SQLAlchemy reads the URL)."""
    parts = parse_database_url(url)
    return parts.masked if parts is not None else url


def _literal_credential(where: str, name: str) -> str:
    hint = (
        "give the password as a secret reference, password='env:NAME' or password='file:/path'"
        if name.lower() != "sslpassword"
        else "keep it in the driver's own configuration on the worker"
    )
    return f"{where}, a literal credential that would show in repr, JSON and the key: {hint}"


@lru_cache(maxsize=64)
def _dialect_known(name: str) -> bool:
    if name in _BUILTIN_DIALECTS:
        return True
    return any(ep.name.split(".")[0] == name for ep in entry_points(group="sqlalchemy.dialects"))


def _sqlite_in_memory(url: str) -> bool:
    rest = url.split("://", 1)[1]
    database = rest[1:] if rest.startswith("/") else rest
    database = database.split("?", 1)[0]
    return database in ("", ":memory:") or "mode=memory" in url

"""FileSpec: one file anywhere fsspec reaches (local disk, memory, S3, ...).

    spec = FileSpec(
        url="s3://bucket/data.csv.gz",
        mode="r",
        compression="gzip",
        storage_options={"endpoint_url": "http://127.0.0.1:9000"},
        secrets={"key": "env:S3_KEY", "secret": "env:S3_SECRET"},
    )
    fs = spec.get()          # this process's fsspec filesystem, built once
    with spec.open() as f:   # the file, decompressed and decoded as the spec says
        header = f.readline()

Fields
    identity:  url, mode, compression, encoding, storage_options, track_content
               (what `open()` yields; all enter `cache_key()`)
    placement: secrets (who reads, not what is read), block_size (bytes per request)

Local paths (no protocol, `file://` or `local://`) are made absolute in the process
that creates the spec, so a worker with another working directory opens the same
file, and `data.csv`, `./data.csv` and `file:///abs/data.csv` share one key.
Symlinks are kept as written, not resolved.

Credentials go in `secrets` as references (`"env:NAME"` or `"file:/path"`), read on
the worker when the filesystem is built; `storage_options` refuses credential-like
options (`key`, `secret`, `token`, `password`, ...) given as literal strings.

`get()` checks that the store answers (one metadata call) and, for a reading spec,
that the file exists; otherwise it raises BuildError and caches nothing.

Writes (`mode="wb"` or `"w"`) are atomic: see `handles.specs._atomic`. Append and
update modes are refused, since they cannot be.

Content tracking (`track_content=True`, reading specs only) adds the file's
version to `cache_key()`: its ETag where the store has one (S3), else size and
modification time (plus the inode on local disks), from one `fs.info()` call.
Cost: one stat locally, one HEAD request on S3, each time a spec instance first
computes its key (once per instance, so once per unpickled copy too). The key
is a snapshot: an instance that computed its key keeps it; make a new spec (or
`spec.replace()`) to see later changes.
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from copy import deepcopy
from datetime import datetime
from typing import IO, TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import Field, JsonValue, PositiveInt, ValidationInfo, field_validator

from handles._allow import UNKNOWN_HOST, FromData, allowed, refused
from handles._allow import Protocol as FsProtocol
from handles._fields import Identity, Placement
from handles._keys import canonical
from handles._optional import require
from handles._secrets import SecretRef, scrubbed, url_has_password
from handles._spec import Spec
from handles._trust import host_problems
from handles.exceptions import BuildError, HandlesError, MissingDependencyError, SpecError
from handles.specs._atomic import held_upload, replace_via_temp
from handles.specs._paths import absolute

if TYPE_CHECKING:
    from types import ModuleType

    from fsspec import AbstractFileSystem

__all__ = ["FileSpec"]

Mode = Literal["rb", "r", "wb", "w"]
Compression = Literal["infer", "gzip", "bz2", "xz", "lzma", "zstd", "lz4"]

READ_MODES = frozenset({"rb", "r"})
LOCAL_PROTOCOLS = frozenset({"file", "local"})
# Stores where an upload is invisible until completed: written in place, no temp copy.
HELD_UPLOAD_PROTOCOLS = frozenset({"s3", "s3a"})
# The pip package behind a codec fsspec only offers when that package is installed.
CODEC_PACKAGES = {"zstd": "zstandard", "lz4": "lz4"}

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
# Storage options that carry credentials: refused as literal strings, so a
# secret can never reach repr, JSON or a cache key.
_CREDENTIAL_OPTIONS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "client_secret",
        "account_key",
        "sas_token",
        "session_token",
        "access_key",
        "secret_key",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "connection_string",
        "credentials",
    }
)
# gcsfs's token= also takes these mode names, which are not secrets.
_TOKEN_MODES = frozenset({"anon", "google_default", "cloud", "browser", "cache"})
# Version fields in fs.info(), strongest first: a content tag, then a time.
_CONTENT_TAGS = ("ETag", "etag", "md5Hash", "crc32c", "checksum")
_TIME_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "created")


# What a FileSpec from data may carry, per protocol (handles._allow): options that name
# no host, credential, file or code; the options that name the endpoint (checked against
# HANDLES_ALLOW_HOSTS); the options a secret reference may fill. Other protocols (sftp,
# ftp, reference, zip, caching layers, ...) only where the worker allows them.
PROTOCOLS = (
    FsProtocol(("file", "local"), options=frozenset({"auto_mkdir"}), url_host=False, local=True),
    FsProtocol(("memory",), url_host=False),
    FsProtocol(
        ("s3", "s3a"),
        options=frozenset(
            {
                "anon",
                "requester_pays",
                "version_aware",
                "use_ssl",
                "client_kwargs.region_name",
                "config_kwargs.connect_timeout",
                "config_kwargs.read_timeout",
                "config_kwargs.retries.max_attempts",
                "config_kwargs.retries.mode",
            }
        ),
        endpoints={"endpoint_url": "{}", "client_kwargs.endpoint_url": "{}"},
        secrets=frozenset({"key", "secret", "token"}),
        default_host="s3.amazonaws.com",
    ),
    FsProtocol(
        ("gcs", "gs"),
        options=frozenset({"project", "requester_pays", "version_aware", "consistency"}),
        endpoints={"endpoint_url": "{}"},
        secrets=frozenset({"token"}),
        default_host="storage.googleapis.com",
    ),
    FsProtocol(
        ("az", "abfs", "abfss"),
        options=frozenset({"anon"}),
        endpoints={"account_name": "{}.blob.core.windows.net", "account_host": "{}"},
        secrets=frozenset({"account_key", "sas_token"}),
    ),
    FsProtocol(
        ("http", "https"),
        options=frozenset({"simple_links", "same_scheme", "size_policy", "cache_type"}),
    ),
)


class FileSpec(Spec["AbstractFileSystem"]):
    """One file anywhere fsspec reaches; `get()` is the filesystem, `open()` the file."""

    kind: Literal["file"] = "file"
    from_data: ClassVar[FromData] = FromData(paths=("url",), protocols=PROTOCOLS)
    """What a spec from data may carry: the protocols above; local paths by HANDLES_ALLOW_PATHS."""

    url: Annotated[str, Identity]
    mode: Annotated[Mode, Identity] = "rb"
    compression: Annotated[Compression | None, Identity] = None
    encoding: Annotated[str | None, Identity] = None
    """Text modes only; None means UTF-8 (never the locale's, which differs by machine)."""
    storage_options: Annotated[dict[str, JsonValue], Identity] = Field(default_factory=dict)
    track_content: Annotated[bool, Identity] = False
    secrets: Annotated[dict[str, SecretRef], Placement] = Field(default_factory=dict)
    """Storage option name -> secret reference, resolved on the worker at build time."""
    block_size: Annotated[PositiveInt | None, Placement] = None

    # -- validation (field order matters: later checks read earlier fields) ----

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return normalize_url(url)

    @field_validator("mode", mode="before")
    @classmethod
    def _check_mode(cls, mode: Any) -> Any:
        if isinstance(mode, str) and any(c in mode for c in "a+x"):
            raise ValueError(
                "a mode that appends, updates or creates ('a', '+', 'x') cannot be written "
                "atomically; use 'wb' or 'w' to replace the whole file, 'rb' or 'r' to read"
            )
        return mode

    @field_validator("encoding")
    @classmethod
    def _check_encoding(cls, encoding: str | None, info: ValidationInfo) -> str | None:
        if encoding is None:
            return None
        if info.data.get("mode") in ("rb", "wb"):
            raise ValueError("an encoding applies to text modes ('r', 'w') only")
        try:
            return codecs.lookup(encoding).name
        except LookupError:
            raise ValueError("unknown encoding: codecs.lookup knows no such name") from None

    @field_validator("storage_options")
    @classmethod
    def _check_storage_options(cls, options: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if "skip_instance_cache" in options:
            raise ValueError("'skip_instance_cache' is managed by handles; leave it out")
        found = _literal_credential(options)
        if found:
            raise ValueError(
                f"{found!r} looks like a credential: pass a reference instead, "
                f"secrets={{'{found.rpartition('.')[2]}': 'env:NAME'}}"
            )
        return options

    @field_validator("track_content")
    @classmethod
    def _check_tracking(cls, track: bool, info: ValidationInfo) -> bool:
        if track and info.data.get("mode") not in (None, *READ_MODES):
            raise ValueError("content tracking is for files a task reads; use mode 'rb' or 'r'")
        return track

    @field_validator("secrets")
    @classmethod
    def _check_secrets(
        cls, secrets: dict[str, SecretRef], info: ValidationInfo
    ) -> dict[str, SecretRef]:
        both = sorted(set(secrets) & set(info.data.get("storage_options") or {}))
        if both:
            raise ValueError(f"{both[0]!r} is given both here and in storage_options")
        return secrets

    # -- where the file is -----------------------------------------------------

    def _untrusted_problems(self) -> list[tuple[str, str]]:
        # From JSON: the protocol's declared options and secrets only (PROTOCOLS),
        # hosts the worker allows (HANDLES_ALLOW_HOSTS), and secrets only to hosts
        # it named (handles._trust).
        protocol = self.protocol
        declared = self.from_data.protocol(protocol)
        if declared is None:
            names = [n for p in self.from_data.protocols for n in p.names]
            if not allowed(self.kind, protocol):
                return [("url", refused(self.kind, "the protocol", protocol, names))]
            declared = FsProtocol((protocol,))  # allowed by the worker: options one by one
        problems = []
        known = {*declared.options, *declared.endpoints}
        for dotted, _ in _leaves(self.storage_options):
            if dotted not in known and not _widened(self.kind, protocol, dotted):
                name = f"{protocol}.{dotted}"
                listed = [f"{protocol}.{k}" for k in known]
                problems.append(
                    (f"storage_options.{dotted}", refused(self.kind, "the option", name, listed))
                )
        for name in self.secrets:
            if name not in declared.secrets and not _widened(self.kind, protocol, name):
                listed = [f"{protocol}.{k}" for k in declared.secrets]
                problems.append(
                    (
                        f"secrets.{name}",
                        refused(self.kind, "a secret in", f"{protocol}.{name}", listed),
                    )
                )
        hosts = _hosts_from_data(self.url, self.storage_options, declared)
        # A secret put where the endpoint goes hides the host until the worker reads it.
        hosts += [
            (f"secrets.{name}", UNKNOWN_HOST)
            for name in self.secrets
            if name in declared.endpoints or name.lower() in _ENDPOINT_OPTIONS
        ]
        return problems + host_problems(hosts, carries_secret=bool(self.secrets))

    @property
    def protocol(self) -> str:
        """The fsspec protocol: 'file' for local paths."""
        scheme, sep, _ = self.url.partition("://")
        return scheme if sep else "file"

    @property
    def path(self) -> str:
        """The file's path as its filesystem's methods take it (`spec.get().info(spec.path)`)."""
        fsspec = require("fsspec", "file", kind=type(self).__name__)
        return fsspec.core.strip_protocol(self.url)  # type: ignore[no-any-return]

    # -- the live object -------------------------------------------------------

    def live_identity(self) -> Any:
        # One filesystem per process for every FileSpec with the same protocol,
        # options and secrets (fsspec itself shares instances the same way): a
        # folder of 50,000 files is one filesystem and one registry entry, not
        # 50,000. The file itself stays in cache_key().
        try:
            options = self._filesystem_options()
        except (HandlesError, ValueError, TypeError, ImportError):
            return None  # no filesystem to share: build() raises the error itself
        return {
            "protocol": self.protocol,
            "options": canonical(options),
            "secrets": {name: str(ref) for name, ref in sorted(self.secrets.items())},
            "block_size": self.block_size,  # placement picks the object, as for every kind
        }

    def build(self) -> AbstractFileSystem:
        fsspec = require("fsspec", "file", kind=type(self).__name__)
        options = self._filesystem_options()
        secrets = self._resolved_secrets()
        # A backend that echoes an option (a path, a protocol name) into its error
        # would show the secret put there: the message shows the reference instead.
        with scrubbed(self.secrets, secrets):
            fs = _open_filesystem(fsspec, self.protocol, options, secrets, shared=False)
            self._probe(fs)
        return fs

    def attached(self, value: AbstractFileSystem) -> None:
        # The filesystem was built for another file: check this one (one metadata
        # call, once per spec instance) as build() checked that one.
        with scrubbed(self.secrets, self._resolved_secrets() if self.secrets else {}):
            self._probe(value)

    async def aget(self) -> AbstractFileSystem:
        """`get()` for coroutines; on an async filesystem (http, s3), this event loop's own.

        Built on the running loop with asynchronous=True, one per loop and
        filesystem, closed on that loop: see handles.specs._file_async.
        """
        # Imported here, where needed: most FileSpecs never meet an event loop.
        from handles.specs._file_async import loop_filesystem  # noqa: PLC0415

        fs = await loop_filesystem(self, _shared_filesystem)
        return fs if fs is not None else await super().aget()

    def teardown(self, value: AbstractFileSystem) -> None:
        # fsspec filesystems have no close(). This instance is ours alone
        # (skip_instance_cache), so dropping it releases its connections through
        # the finalizers fsspec backends register; the listings cache goes now.
        value.invalidate_cache()

    def fingerprint(self) -> Any:
        if not self.track_content:
            return None
        try:
            # fsspec's own per-process instance, not the registry: cache_key() must
            # not build registry entries (get() itself needs the key).
            fs = self._filesystem(shared=True)
            fs.invalidate_cache(self.path)  # a shared instance may hold a stale listing
            info = fs.info(self.path)
        except FileNotFoundError:
            return {"missing": True}  # a key for "absent"; it moves when the file appears
        except MissingDependencyError:
            raise
        except Exception as exc:
            # The same error get() would give, though raised before any build.
            raise BuildError.for_spec(self, exc) from exc
        return version_of(info)

    @contextmanager
    def open(self) -> Iterator[IO[Any]]:
        """The file, opened in the spec's mode; a write replaces it atomically on success."""
        fs = self.get()
        options = {"block_size": self.block_size} if self.block_size else {}
        if self.mode in READ_MODES:
            raw_cm = fs.open(self.path, "rb", **options)
        elif self.protocol in HELD_UPLOAD_PROTOCOLS:
            raw_cm = held_upload(fs, self.path, **options)
        else:
            raw_cm = replace_via_temp(
                fs, self.path, local=self.protocol in LOCAL_PROTOCOLS, **options
            )
        with raw_cm as raw, self._layers(raw) as stream:
            yield stream

    # -- helpers ---------------------------------------------------------------

    def _filesystem(self, *, shared: bool) -> AbstractFileSystem:
        label = type(self).__name__
        fsspec = require("fsspec", "file", kind=label)
        return _open_filesystem(
            fsspec,
            self.protocol,
            self._filesystem_options(),
            self._resolved_secrets(),
            shared=shared,
        )

    def _filesystem_options(self) -> dict[str, Any]:
        """storage_options plus what the URL itself says (an SFTP host and user, say)."""
        label = type(self).__name__
        fsspec = require("fsspec", "file", kind=label)
        _check_protocol(fsspec, self.protocol, label)
        self._check_codec(fsspec)
        return {**_url_options(fsspec, self), **self.storage_options}

    def _resolved_secrets(self) -> dict[str, str]:
        return _resolved(self.secrets, type(self).__name__)

    def _check_codec(self, fsspec: ModuleType) -> None:
        codec = self.compression
        if codec in (None, "infer") or codec in fsspec.available_compressions():
            return
        raise SpecError.one(
            type(self).__name__,
            "compression",
            f"{codec!r} needs the {CODEC_PACKAGES.get(str(codec), str(codec))} package, "
            "which is not installed",
        )

    def _probe(self, fs: AbstractFileSystem) -> None:
        # One metadata call, so an unreachable store or a missing input fails
        # here, at first get(), rather than halfway through a task.
        with self._probing():
            if self.mode not in READ_MODES:
                fs.exists(self.path)
                return
            info = fs.info(self.path)
        self._refuse_directory(info)

    @contextmanager
    def _probing(self) -> Iterator[None]:
        """The probe's errors as SpecErrors naming the url (also for the async probe)."""
        label = type(self).__name__
        try:
            yield
        except FileNotFoundError:
            raise SpecError.one(label, "url", f"no such file: {self.url}") from None
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            raise SpecError.one(label, "url", f"cannot check {self.url}: {detail}") from exc

    def _refuse_directory(self, info: Mapping[str, Any]) -> None:
        if info.get("type") == "directory":
            message = f"{self.url} is a directory, not a file"
            raise SpecError.one(type(self).__name__, "url", message)

    @contextmanager
    def _layers(self, raw: IO[bytes]) -> Iterator[IO[Any]]:
        # Decompression and decoding over the raw file. On the way out the layers
        # are finished (trailer written, text flushed) but the raw file is left
        # open: the atomic writer still has to sync and commit it.
        reading = self.mode in READ_MODES
        stream: IO[Any] = raw
        with ExitStack() as finish:
            codec = self._codec()
            if codec is not None:
                from fsspec.compression import compr  # noqa: PLC0415  (fsspec)

                stream = compr[codec](raw, mode="rb" if reading else "wb")
                finish.callback(stream.close)  # never closes a file object it was given
            if self.mode in ("r", "w"):
                text = io.TextIOWrapper(stream, encoding=self.encoding or "utf-8")
                finish.callback(text.detach)  # flushes, leaves the layer below open
                stream = text
            yield stream

    def _codec(self) -> str | None:
        if self.compression != "infer":
            return self.compression
        from fsspec.utils import infer_compression  # noqa: PLC0415  (fsspec)

        return infer_compression(self.path)  # type: ignore[no-any-return]


class FilesystemName(NamedTuple):
    """What names a FileSpec's filesystem: one live filesystem per name, per process or loop."""

    protocol: str
    options: dict[str, Any]
    """storage_options plus what the URL itself says (an SFTP host and user, say)."""
    secrets: dict[str, SecretRef]


def _shared_filesystem(spec: FileSpec) -> FilesystemName:
    """The name of `spec`'s filesystem; checks the protocol and codec (SpecError)."""
    return FilesystemName(spec.protocol, spec._filesystem_options(), dict(spec.secrets))


def _resolved(secrets: Mapping[str, SecretRef], label: str) -> dict[str, str]:
    """The secrets' values, read here; a missing one is a SpecError naming `label`'s field."""
    return {name: ref.resolve(label, f"secrets.{name}") for name, ref in secrets.items()}


def _url_options(fsspec: ModuleType, spec: FileSpec) -> dict[str, Any]:
    # What fsspec's url_to_fs would read from the URL besides the path.
    cls = fsspec.get_filesystem_class(spec.protocol)
    return dict(cls._get_kwargs_from_urls(spec.url))


def _open_filesystem(
    fsspec: ModuleType,
    protocol: str,
    options: Mapping[str, Any],
    secrets: Mapping[str, str],
    *,
    shared: bool,
) -> AbstractFileSystem:
    # A deep copy: backends edit nested options in place (botocore rewrites
    # config_kwargs["retries"]), which would change a spec's JSON under its key.
    kwargs: dict[str, Any] = {**deepcopy(dict(options)), **secrets}
    if not shared:
        kwargs["skip_instance_cache"] = True
    return fsspec.filesystem(protocol, **kwargs)


# -- pure helpers ---------------------------------------------------------------


def normalize_url(url: str) -> str:
    """The canonical spelling of a file URL; raises ValueError for a malformed one."""
    if url != url.strip():
        raise ValueError("the URL has leading or trailing whitespace")
    if not url:
        raise ValueError("missing path: the URL is empty")
    if "::" in url:
        raise ValueError("chained URLs ('a::b') are not supported: a FileSpec names one file")
    if url_has_password(url):
        # As user:password@host to urlsplit (fsspec's parser) or to a greedy one
        # (u:#x@h, u:/x@h): either way a secret would show in repr, JSON and keys.
        raise ValueError(
            "the URL contains a password (it reads as user:password@host): remove it and pass "
            "secrets={'password': 'env:NAME'} (for an '@' in a path after host:port, give "
            "the host in storage_options and the URL as proto:///path)"
        )
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _local_path(url)
    scheme = scheme.lower()
    if not _SCHEME.fullmatch(scheme):
        raise ValueError("bad URL scheme: expected letters, digits, '+', '-' or '.'")
    if scheme in LOCAL_PROTOCOLS:
        return _local_path(rest)
    if not rest.strip("/"):
        raise ValueError("missing path: the URL names no file after its scheme")
    if rest.endswith("/"):
        raise ValueError("the URL ends with '/': it names a folder, not a file")
    return f"{scheme}://{rest}"


# Storage options named like an endpoint (s3fs, gcsfs, adlfs, sftp, http): in an option
# the worker allowed (HANDLES_ALLOW_OPTIONS), they are checked as hosts too.
_ENDPOINT_OPTIONS = frozenset(
    {"endpoint_url", "endpoint", "host", "hostname", "base_url", "account_url", "proxy", "proxies"}
)


def _leaves(options: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, value) for every option that is not itself a mapping of options."""
    found: list[tuple[str, Any]] = []
    for name, value in options.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            found += _leaves(value, f"{dotted}.")
        else:
            found.append((dotted, value))
    return found


def _widened(kind: str, protocol: str, dotted: str) -> bool:
    # HANDLES_ALLOW_OPTIONS=file:s3.config_kwargs allows everything under it too.
    parts = dotted.split(".")
    return any(allowed(kind, f"{protocol}.{'.'.join(parts[:n])}") for n in range(1, len(parts) + 1))


def _hosts_from_data(
    url: str, options: Mapping[str, Any], declared: FsProtocol
) -> list[tuple[str, str]]:
    """(field, host) for each host a filesystem for `url` and `options` contacts.

    The URL's host as fsspec reads it (for object stores, the bucket), every
    declared endpoint option (as a host: `account_name` is the account's host),
    every option named like an endpoint in a widened option, and the store's
    default host when no endpoint is given. A host that cannot be read from a
    URL-like value is UNKNOWN_HOST.
    """
    found: list[tuple[str, str]] = []
    if declared.url_host:
        found.append(("url", _host_of(url) or UNKNOWN_HOST))
    endpoint_given = False
    for dotted, value in _leaves(options):
        template = declared.endpoints.get(dotted)
        generic = dotted.rpartition(".")[2].lower() in _ENDPOINT_OPTIONS
        if template is None and not generic:
            continue
        where = f"storage_options.{dotted}"
        if not isinstance(value, str) or not value:
            found.append((where, UNKNOWN_HOST))
            continue
        endpoint_given = True
        text = (template or "{}").format(value)
        found.append((where, _host_of(text) or UNKNOWN_HOST))
    if declared.default_host and not endpoint_given:
        found.append(("url", declared.default_host))
    return found


def _host_of(text: str) -> str | None:
    try:
        return urlsplit(text if "://" in text else f"//{text}").hostname
    except ValueError:
        return None


def _local_path(path: str) -> str:
    if not path:
        raise ValueError("missing path: the URL is empty")
    if path.endswith(("/", "\\")):
        raise ValueError("the path ends with a separator: it names a folder, not a file")
    # Resolved here, in the creating process: workers may run elsewhere (the path
    # rule of every kind: handles.specs._paths). A URL's path has no backslashes:
    # fsspec reads them as separators, so the key does too.
    return absolute(path).replace("\\", "/")


def version_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """JSON data that changes when the file's content does, from an fs.info() result."""
    version: dict[str, Any] = {"size": info.get("size")}
    for name in _CONTENT_TAGS:
        if info.get(name):
            version[name] = _jsonable(info[name])
            return version
    for name in _TIME_FIELDS:
        if info.get(name) is not None:
            version[name] = _jsonable(info[name])
            break
    if info.get("ino"):
        # Atomic replacement gives the file a new inode on every write, even one
        # within the same mtime tick.
        version["ino"] = info["ino"]
    return version


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _literal_credential(options: Mapping[str, Any], prefix: str = "") -> str | None:
    """The dotted name of the first credential given as a literal string, if any."""
    for name, value in options.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping):
            found = _literal_credential(value, f"{dotted}.")
            if found:
                return found
        elif (
            name.lower() in _CREDENTIAL_OPTIONS
            and isinstance(value, str)
            and value
            and not (name.lower() == "token" and value in _TOKEN_MODES)
        ):
            return dotted
    return None


def _check_protocol(fsspec: ModuleType, protocol: str, label: str) -> None:
    """SpecError (naming `label`'s url) unless fsspec knows `protocol` and can load it."""
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise SpecError.one(
            label,
            "url",
            f"unknown protocol {protocol!r}; fsspec.available_protocols() lists the known ones",
        ) from None
    except ImportError as exc:
        if protocol in HELD_UPLOAD_PROTOCOLS:
            raise MissingDependencyError("s3fs", "s3", kind=label) from exc
        raise SpecError.one(
            label, "url", f"protocol {protocol!r} needs a package that is not installed: {exc}"
        ) from exc

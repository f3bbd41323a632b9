"""SpacySpec: a spaCy pipeline, loaded once per worker process.

    spec = SpacySpec(name="en_core_web_sm", exclude=["parser", "lemmatizer"])
    nlp = spec.get()                        # spacy.load(...) on first use in this process
    SpacySpec(path="models/ner-v3")         # a pipeline saved with nlp.to_disk

A `path` follows the path rule of every kind (`handles.specs._paths`): it is made
absolute and normalized where the spec is validated, so the same directory named
from two working directories is one key, and a worker with another working
directory loads the same pipeline.

The pipeline's own name and version (from its meta.json) are part of the cache
key, so installing a new version of a model moves the key. They are read in
`fingerprint()`, not in a validator:

- construction stays a pure check of the spec's shape, so a spec can be built,
  sent and stored on a machine that does not have the model (an orchestrator);
- the meta is read where the key is computed, from the model that process would
  load, and `Spec.cache_key()` keeps the digest per instance;
- reading it needs only `json`: no spaCy import, no pipeline load. Parsed metas
  are cached per file and re-read only when the file's stat changes.

A model the key cannot find (no such package, a directory without meta.json)
is a SpecError naming the field, raised by `cache_key()` and so by the first
`get()`, before any build is attempted. Where spaCy itself is missing, a pipeline
package named by `name=` cannot be there either: that is a MissingDependencyError
naming the `spacy` extra.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from handles._allow import FromData
from handles._fields import Identity, Placement
from handles._optional import require
from handles._spec import Spec
from handles.exceptions import MissingDependencyError, SpecError
from handles.specs._device import module_nbytes
from handles.specs._paths import PathStr, absolute

if TYPE_CHECKING:
    from spacy.language import Language

__all__ = ["PipelineMeta", "SpacySpec"]

# spaCy pipeline packages are top-level importable modules: en_core_web_sm.
_PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class PipelineMeta:
    """What a pipeline's meta.json says about it (the parts handles uses)."""

    lang: str
    name: str
    version: str
    components: tuple[str, ...] | None  # None: an old meta without the list

    @property
    def title(self) -> str:
        return f"{self.lang}_{self.name} {self.version}"

    def identity(self) -> dict[str, str]:
        return {"lang": self.lang, "name": self.name, "version": self.version}


class SpacySpec(Spec["Language"]):
    """A spaCy `Language`, from an installed package (`name=`) or a saved directory (`path=`)."""

    kind: Literal["spacy"] = "spacy"
    from_data: ClassVar[FromData] = FromData(paths=("path",))
    """From data, `path` is limited by HANDLES_ALLOW_PATHS (see handles._allow)."""
    # 2: `path` is stored absolute and normalized (resolved where validated, not in the worker).
    schema_version = 2

    name: Annotated[str | None, Identity] = None
    """An installed pipeline package, as `spacy.load` takes it: "en_core_web_sm"."""
    path: Annotated[PathStr | None, Identity] = None
    """A directory written by `nlp.to_disk`; stored absolute (relative paths resolve where
    the spec is validated)."""
    disable: Annotated[tuple[str, ...], Identity] = ()
    """Components loaded but not run (they can be re-enabled with `nlp.enable_pipe`)."""
    exclude: Annotated[tuple[str, ...], Identity] = ()
    """Components not loaded at all: faster to load, less memory."""
    batch_size: Annotated[int | None, Field(ge=1), Placement] = None
    """`nlp.batch_size` for `nlp.pipe`: changes memory and speed, never results."""

    # -- validation (shape only: no filesystem, no imports) --------------------

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "/" in value or "\\" in value or value.startswith("."):
            raise ValueError("looks like a directory; use path= for a pipeline saved with to_disk")
        if not _PACKAGE_NAME.fullmatch(value):
            # A hint, never the value itself (validation errors do not echo input).
            fixable = _PACKAGE_NAME.fullmatch(value.replace("-", "_"))
            suggestion = " ('-' must be '_')" if fixable else ""
            raise ValueError(
                f"is not an importable package name{suggestion}; "
                "spaCy pipelines load by their module name, such as 'en_core_web_sm'"
            )
        return value

    @field_validator("path")
    @classmethod
    def _check_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value == "":
            raise ValueError("must not be empty")
        if value is not None:
            value = absolute(value)  # the path rule: no filesystem access
        if "name" not in info.data:  # name itself was invalid: reported there
            return value
        has_name = info.data["name"] is not None
        if has_name and value is not None:
            raise ValueError("give name= (an installed package) or path=, not both")
        if not has_name and value is None:
            raise ValueError(
                "a spaCy spec needs name= (an installed pipeline package, "
                "e.g. 'en_core_web_sm') or path= (a directory saved with nlp.to_disk)"
            )
        return value

    @field_validator("disable", "exclude", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        # spacy.load takes a single component name too.
        return (value,) if isinstance(value, str) else value

    @field_validator("disable", "exclude")
    @classmethod
    def _sorted_names(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if any(not item.strip() for item in value):
            raise ValueError("component names must not be empty")
        if info.field_name == "exclude":
            both = sorted(set(value) & set(info.data.get("disable", ())))
            if both:
                raise ValueError(
                    f"{len(both)} component(s) also in disable: a component is disabled or excluded"
                )
        # Order does not matter to spaCy, so it must not move the key.
        return tuple(sorted(set(value)))

    # -- identity -------------------------------------------------------------

    def fingerprint(self) -> dict[str, str]:
        """The pipeline's lang, name and version from its meta.json: part of `cache_key()`."""
        return self.meta().identity()

    def meta(self) -> PipelineMeta:
        """The pipeline's meta, read cheaply (no spaCy import) and cached per file."""
        label = type(self).__name__
        if self.name is not None:
            return _read_meta(_package_dir(self.name, label) / "meta.json", "name", label)
        assert self.path is not None  # the validators guarantee one of the two
        return _read_meta(_pipeline_dir(self.path, label) / "meta.json", "path", label)

    # -- the live object ----------------------------------------------------------

    def build(self) -> Language:
        spacy = require("spacy", "spacy", kind=type(self).__name__)
        self._check_components(self.meta())
        # A Path loads as a directory, never looked up as a package name.
        source = self.name if self.name is not None else Path(str(self.path))
        # spaCy adds `disable` to the pipeline's own disabled list (en_core_web_sm
        # ships with senter disabled), so an empty one changes nothing.
        nlp: Language = spacy.load(
            source,
            disable=list(self.disable),
            exclude=list(self.exclude),
        )
        if self.batch_size is not None:
            nlp.batch_size = self.batch_size
        return nlp

    def teardown(self, value: Language) -> None:
        """Nothing to close: a pipeline holds memory only, freed with its last reference."""

    def nbytes(self, value: Language) -> dict[str, int]:
        """An estimate of the pipeline's memory by device: its arrays, not its Python objects.

        Counts the vocabulary's vectors table (`nlp.vocab.vectors.data`) and every
        parameter array of each component's thinc model (found with `model.walk()`;
        a layer shared by several components counts once), plus the parameters of
        torch models wrapped in thinc layers. Not counted: the string store,
        lexemes, lookup tables and rules, Python objects; for a small pipeline
        these can be a large part of its real footprint.
        """
        return _pipeline_nbytes(value)

    def _check_components(self, meta: PipelineMeta) -> None:
        # spaCy silently ignores unknown names here, so a typo in disable= would
        # run the component it meant to switch off.
        if meta.components is None:
            return
        for field in ("disable", "exclude"):
            unknown = [c for c in getattr(self, field) if c not in meta.components]
            if unknown:
                raise SpecError.one(
                    type(self).__name__,
                    field,
                    f"{meta.title} has no component {', '.join(map(repr, unknown))}; "
                    f"its components are {', '.join(meta.components)}",
                )


def _pipeline_nbytes(nlp: Any) -> dict[str, int]:
    """What `SpacySpec.nbytes` counts, for any `Language`."""
    arrays, torch_modules = _model_arrays(nlp)
    vectors = getattr(getattr(nlp.vocab, "vectors", None), "data", None)
    if vectors is not None:
        arrays.setdefault(id(vectors), vectors)
    sizes: dict[str, int] = {}
    for array in arrays.values():
        device = _array_device(array)
        sizes[device] = sizes.get(device, 0) + int(getattr(array, "nbytes", 0))
    if torch_modules:
        for inner in torch_modules.values():
            for device, size in module_nbytes(inner).items():
                sizes[device] = sizes.get(device, 0) + size
    return {device: size for device, size in sizes.items() if size}


def _model_arrays(nlp: Any) -> tuple[dict[int, Any], dict[int, Any]]:
    """Parameter arrays of the components' thinc models, and torch models they wrap, by id."""
    arrays: dict[int, Any] = {}
    torch_modules: dict[int, Any] = {}
    nodes: dict[int, Any] = {}
    for _, component in nlp.components:
        model: Any = getattr(component, "model", None)
        if hasattr(model, "walk"):
            nodes.update((id(node), node) for node in model.walk())
    for node in nodes.values():
        for name in node.param_names:
            if node.has_param(name):
                array = node.get_param(name)
                arrays.setdefault(id(array), array)
        for shim in getattr(node, "shims", ()):
            inner = getattr(shim, "_model", None)
            if inner is not None:
                torch_modules.setdefault(id(inner), inner)
    return arrays, torch_modules


def _array_device(array: Any) -> str:
    """ "cpu" for numpy arrays; "cuda:N" for cupy arrays on GPU N."""
    if type(array).__module__.partition(".")[0] == "cupy":
        return f"cuda:{array.device.id}"
    return "cpu"


# -- reading meta.json ------------------------------------------------------------

_meta_cache: dict[str, tuple[tuple[int, int, int], PipelineMeta]] = {}
_package_dirs: dict[str, Path] = {}
_cache_lock = threading.Lock()


def _package_dir(name: str, label: str) -> Path:
    """The installed package's directory, found without importing it (or spaCy).

    `label` names the spec class in errors, as do the other readers' below.
    """
    cached = _package_dirs.get(name)
    if cached is not None:
        return cached
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise SpecError.one(label, "name", f"cannot look up package {name!r}: {exc}") from None
    if found is None:
        if importlib.util.find_spec("spacy") is None:
            raise MissingDependencyError("spacy", "spacy", kind=label)
        raise SpecError.one(
            label,
            "name",
            f"no spaCy pipeline package {name!r} is installed in this environment "
            f"(pip install it, or use path= for a saved pipeline)",
        )
    locations = list(found.submodule_search_locations or [])
    if not locations:
        raise SpecError.one(
            label, "name", f"{name!r} is a module, not a spaCy pipeline package (no meta.json)"
        )
    directory = Path(locations[0])
    # Failures are not cached: the package may be installed later in this process.
    with _cache_lock:
        _package_dirs[name] = directory
    return directory


def _pipeline_dir(path: str, label: str) -> Path:
    directory = Path(path)
    if not directory.exists():
        raise SpecError.one(label, "path", f"{path!r} does not exist")
    if not directory.is_dir():
        raise SpecError.one(label, "path", f"{path!r} is a file, not a pipeline directory")
    return directory


def _read_meta(meta_file: Path, field: str, label: str) -> PipelineMeta:
    """Parse `meta_file`, reusing the last parse while its stat is unchanged."""
    try:
        stat = meta_file.stat()
    except FileNotFoundError:
        hint = (
            "the package is not a spaCy pipeline package"
            if field == "name"
            else "a pipeline directory is written by nlp.to_disk"
        )
        raise SpecError.one(
            label, field, f"{meta_file.parent} is not a spaCy pipeline: no meta.json ({hint})"
        ) from None
    signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    key = str(meta_file.resolve())
    cached = _meta_cache.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    meta = _parse_meta(meta_file, field, label)
    with _cache_lock:
        _meta_cache[key] = (signature, meta)
    return meta


def _parse_meta(meta_file: Path, field: str, label: str) -> PipelineMeta:
    try:
        data = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SpecError.one(label, field, f"cannot read {meta_file}: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError.one(label, field, f"{meta_file} is not a JSON object")
    missing = [k for k in ("lang", "name", "version") if not isinstance(data.get(k), str)]
    if missing:
        raise SpecError.one(
            label, field, f"{meta_file} lacks the pipeline's {', '.join(missing)} (strings)"
        )
    components = data.get("components")
    return PipelineMeta(
        lang=data["lang"],
        name=data["name"],
        version=data["version"],
        components=tuple(map(str, components)) if isinstance(components, list) else None,
    )

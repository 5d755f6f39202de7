"""Recipes: versioned YAML, validated into frozen models before anything runs.

Every problem in a recipe is collected and reported together, each with the file, the line and
the path inside the recipe, e.g.

    recipes/csm_1b.yaml:14: steps[2].use: unknown transform 'widen-device-chek' (did you mean 'widen-device-check'?)
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from yaml.composer import ComposerError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from porter.errors import UsageError
from porter.transforms import all_transforms

FORMAT_VERSION = 1
_FROZEN = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# Limits on what a recipe may ask for: a recipe is a short reviewed file, so anything past these is
# a mistake or an attack (README: Trust model).
MAX_RECIPE_BYTES = 1 << 20  # 1 MiB of YAML
MAX_YAML_DEPTH = 64  # nested collections
MAX_ALIAS_NODES = 10_000  # nodes that YAML aliases may add to the document, all together
MAX_NAME = 100  # a recipe name becomes a directory name (with prefixes and suffixes)
MAX_COMPONENT = 255  # one path component (NAME_MAX)
MAX_GLOB = 1000
MAX_GLOB_STARS = 16  # each `*` is a backtracking point in the compiled pattern


def _no_control(value: str, what: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} contains a control character")
    return value


def _relative(value: str, what: str) -> str:
    _no_control(value, what)
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"{what} must be a relative path inside the tree, without '..'")
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT for part in p.parts):
        raise ValueError(f"{what} has a path component longer than {MAX_COMPONENT} bytes")
    return value


def check_glob(value: str, what: str = "a files: glob") -> str:
    """A relative glob that compiles: `**`, `*`, `?` and `[...]` character classes."""
    _relative(value, what)
    if len(value) > MAX_GLOB or value.count("*") > MAX_GLOB_STARS:
        raise ValueError(f"{what} {value[:60]!r} is too long (at most {MAX_GLOB} characters, {MAX_GLOB_STARS} '*')")
    from porter.rewrite import _glob

    try:
        _glob(value)
    except re.error as exc:
        raise ValueError(f"{what} {value!r} is not a valid glob: {exc.msg}"
                         " (a [...] class needs valid ranges such as [a-z]; write [[] for a literal '[')") from None
    return value


# -- git URLs: only what `git fetch` cannot turn into a command ---------------------------------
_GIT_SCHEMES = ("https", "http", "ssh", "git", "file")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+")  # name, IPv4, IPv6
_SCP = re.compile(r"(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._~+-]*)@)(?P<host>[^/:@]+):(?P<path>[^:].*)", re.S)
_TRANSPORT = re.compile(r"[A-Za-z0-9+.-]*::")  # git's `<transport>::<address>` (transport_get in transport.c)
GIT_URL_FORMS = ("https://HOST/PATH, http://, ssh://[USER@]HOST/PATH, git://HOST/PATH, file:///ABS/PATH,"
                 " USER@HOST:PATH, or a local path starting with /, ./ or ../")


def check_git_url(value: str) -> str:
    """Raise ValueError unless `value` is a repository address git reads as data, never as an option
    or a transport that runs a command (ext::, fd::, --upload-pack=..., ssh://-oProxyCommand=...)."""
    _no_control(value, "the repository address")
    if not value.strip():
        raise ValueError("the repository address is empty")
    if value.startswith("-"):
        raise ValueError(f"{value!r} starts with '-', which git would read as an option; expected {GIT_URL_FORMS}")
    if _TRANSPORT.match(value):
        raise ValueError(f"{value!r} names a git transport with '::' (ext::, fd::, ...), which can run"
                         f" commands; expected {GIT_URL_FORMS}")
    if value.startswith(("/", "./", "../")):
        return value
    scheme, sep, _ = value.partition("://")
    if sep:
        if scheme.lower() not in _GIT_SCHEMES:
            raise ValueError(f"{value!r}: the {scheme}:// scheme is not fetched; expected {GIT_URL_FORMS}")
        parts = urlsplit(value)
        if scheme.lower() == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise ValueError(f"{value!r}: a file:// URL needs an absolute path (file:///abs/path)")
            return value
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            raise ValueError(f"{value!r} has a port that is not a number") from None
        host = parts.hostname or ""
        user = parts.username or ""
        if not _HOST.fullmatch(host) or user.startswith("-"):
            raise ValueError(f"{value!r}: the host must be a host name or address"
                             " (letters, digits, '.', '-', not starting with '-')")
        return value
    m = _SCP.fullmatch(value)
    if m and _HOST.fullmatch(m["host"]):
        return value
    raise ValueError(f"{value!r} is not a repository address; expected {GIT_URL_FORMS}")


def check_requirement(value: str, what: str) -> str:
    """A PEP 508 requirement string (`name[extra]>=1; marker`)."""
    _no_control(value, what)
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging comes with pip and every torch install
        return value
    try:
        Requirement(value)
    except InvalidRequirement as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"{what} {value!r} is not a PEP 508 requirement ({first})") from None
    return value


_REPO_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95})")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,254}")


def check_repo_id(value: str, what: str, owner_required: bool = False) -> str:
    parts = value.split("/")
    ok = (1 + owner_required) <= len(parts) <= 2 and all(_REPO_ID.fullmatch(p) for p in parts) and ".." not in value
    if not ok:
        form = "OWNER/NAME" if owner_required else "NAME or OWNER/NAME"
        raise ValueError(f"{what} {value!r} is not a repository id ({form}: letters, digits, '.', '_', '-')")
    return value


def check_revision(value: str, what: str = "revision") -> str:
    if not _REVISION.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not a revision (a commit sha, tag or branch: letters, digits,"
                         " '.', '_', '/', '+', '-', not starting with '-')")
    return value


SOURCE_KINDS = ("path", "pypi", "git", "hub", "modelscope")


class Source(BaseModel):
    """Where upstream code comes from. Exactly one of path / pypi / git / hub / modelscope, always pinned."""

    model_config = _FROZEN

    id: str | None = Field(None, description="name for `--source ID=DIR`", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    into: str = Field(".", description="sub-directory of the patched package it is placed in")
    path: str | None = None
    pypi: str | None = Field(None, description="name==version")
    archive: Literal["wheel", "sdist"] = "wheel"
    sha256: str | None = Field(None, description="expected sha256 of the downloaded archive")
    git: str | None = None
    rev: str | None = Field(None, description="full 40-hex commit sha")
    hub: str | None = Field(None, description="Hugging Face repo id")
    modelscope: str | None = Field(None, description="ModelScope repo id (OWNER/NAME)")
    revision: str | None = Field(None, description="hub: and modelscope: commit sha, tag or branch")
    files: tuple[str, ...] | None = Field(
        None, description="globs of the files to take from the source (all when omitted)")
    note: str = ""

    @field_validator("into")
    @classmethod
    def _into(cls, v: str) -> str:
        return _relative(v, "into")

    @field_validator("pypi")
    @classmethod
    def _pinned_pypi(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,199})==[A-Za-z0-9.!+_-]{1,100}", v):
            raise ValueError(f"pypi source {v!r} must be pinned as name==version")
        return v

    @field_validator("git")
    @classmethod
    def _git_url(cls, v: str | None) -> str | None:
        return None if v is None else check_git_url(v)

    @field_validator("hub")
    @classmethod
    def _hub_id(cls, v: str | None) -> str | None:
        return None if v is None else check_repo_id(v, "hub:")

    @field_validator("modelscope")
    @classmethod
    def _ms_id(cls, v: str | None) -> str | None:
        return None if v is None else check_repo_id(v, "modelscope:", owner_required=True)

    @field_validator("revision")
    @classmethod
    def _revision(cls, v: str | None) -> str | None:
        return None if v is None else check_revision(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None:
            _no_control(v, "path:")
            if not v.strip():
                raise ValueError("path: is empty")
        return v

    @field_validator("files")
    @classmethod
    def _source_globs(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for g in v or ():
            check_glob(g, "a source files: glob")
        return v

    @field_validator("rev")
    @classmethod
    def _full_sha(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{40}", v):
            raise ValueError(f"rev {v!r} must be a full 40-character commit sha")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> "Source":
        kinds = [k for k in SOURCE_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "a source needs exactly one of path:, pypi:, git:, hub:, modelscope:"
                + (f" (found {', '.join(kinds)})" if kinds else "")
            )
        if self.git is not None and self.rev is None:
            raise ValueError("git: sources need rev: with a full commit sha")
        for k in ("hub", "modelscope"):
            if getattr(self, k) is not None and self.revision is None:
                raise ValueError(f"{k}: sources need revision: (a commit sha or tag)")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in SOURCE_KINDS if getattr(self, k) is not None)

    @property
    def label(self) -> str:
        return self.id or {
            "path": self.path,
            "pypi": self.pypi,
            "git": f"{self.git}@{self.rev}",
            "hub": f"{self.hub}@{self.revision}",
            "modelscope": f"{self.modelscope}@{self.revision}",
        }[self.kind]


class Step(BaseModel):
    model_config = _FROZEN

    use: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    files: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    exclude_symbols: tuple[str, ...] = Field(
        (), description="functions or classes (`name` or `Class.method`) the step leaves alone")
    expect: int | None = Field(None, ge=0, description="matches expected on the pinned source")
    reason: str = ""

    @field_validator("files", "exclude")
    @classmethod
    def _globs(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for g in v or ():
            check_glob(g)
        return v

    @field_validator("exclude_symbols")
    @classmethod
    def _symbols(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
                raise ValueError(f"{name!r} is not a function or class name (`name` or `Class.method`)")
        return v


class Package(BaseModel):
    """Packaging metadata used when the source has none of its own (hub code, plain trees)."""

    model_config = _FROZEN

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")
    version: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.!+_-]{0,99}$")
    local_version: str = Field("npu", description="PEP 440 local label added to the version",
                               pattern=r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$", max_length=100)
    dependencies: tuple[str, ...] = ()

    @field_validator("dependencies")
    @classmethod
    def _requirements(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for r in v:
            check_requirement(r, "a dependency")
        return v


class Scan(BaseModel):
    """Where to look for CUDA-specific code left after the steps (the report's findings)."""

    model_config = _FROZEN

    files: tuple[str, ...] = ("**/*.py",)
    exclude: tuple[str, ...] = ()

    @field_validator("files", "exclude")
    @classmethod
    def _globs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for g in v:
            check_glob(g, "a scan glob")
        return v


class NpuOptions(BaseModel):
    """torch_npu options the patched package sets when it is imported on an npu host."""

    model_config = _FROZEN

    jit_compile: bool | None = Field(
        None, description="torch_npu.npu.set_compile_mode(jit_compile=...): false runs operators from"
        " the prebuilt binary kernels instead of compiling them online")


class Runtime(BaseModel):
    """npu runtime settings the hand ports set by hand (shell exports), as recipe data.

    The patched package applies them when it is imported on an npu host (torch_npu installed),
    before torch_npu initialises, never overriding a variable the user set, and never on CUDA or
    CPU hosts (porter.runtime writes the code)."""

    model_config = _FROZEN

    env: dict[str, str] = Field(default_factory=dict, description="environment variables (os.environ.setdefault)")
    npu_options: NpuOptions = NpuOptions()

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        for name, value in v.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name (letters, digits, _)")
            if not isinstance(value, str):
                shown = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
                raise ValueError(f"{name}: environment values are text; quote it: {name}: \"{shown}\"")
        return v

    @property
    def empty(self) -> bool:
        return not self.env and self.npu_options.jit_compile is None


def _weights_model() -> Any:
    try:
        from porter.weights import WeightsSpec  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - the weights module is optional during bring-up
        return dict[str, Any]
    return WeightsSpec


def _smoke_model() -> Any:
    try:
        from porter.smoke.spec import SmokeSpec  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover
        return dict[str, Any]
    return SmokeSpec


class Recipe(BaseModel):
    model_config = _FROZEN

    porter: Literal[1]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=MAX_NAME)
    description: str = ""
    source: tuple[Source, ...]
    package: Package = Package()
    device: Literal["auto", "npu", "npu-sim", "cuda", "cpu"] = "auto"
    steps: tuple[Step, ...]
    scan: Scan = Scan()
    runtime: Runtime | None = None
    weights: _weights_model() | None = None  # type: ignore[valid-type]
    smoke: _smoke_model() | None = None  # type: ignore[valid-type]

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @field_validator("source")
    @classmethod
    def _at_least_one(cls, v: tuple[Source, ...]) -> tuple[Source, ...]:
        if not v:
            raise ValueError("a recipe needs a source")
        return v

    @property
    def sources(self) -> tuple[Source, ...]:
        return self.source


@dataclass(frozen=True)
class LoadedRecipe:
    recipe: Recipe
    path: Path
    sha256: str
    transforms: tuple[Any, ...]  # one Transform instance per step
    notes: tuple[str, ...] = ()  # file:line: what the step order costs (see order_notes)


# -- loading ----------------------------------------------------------------------------------
class _LineLoader(yaml.SafeLoader):
    """A SafeLoader with limits: collections nested at most MAX_YAML_DEPTH deep, no alias that
    refers to a node it is inside (a recursive anchor), and at most MAX_ALIAS_NODES nodes added by
    aliases in all (a few hundred bytes of nested aliases otherwise expand to millions of nodes:
    "billion laughs"). Each refusal is a ComposerError with the alias's or node's line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open_anchors: set[str] = set()
        self._depth = 0
        self._sizes: dict[int, int] = {}
        self._expanded = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise ComposerError(None, None, f"alias *{event.anchor} refers to a node it is inside"
                                    " (a recursive anchor): recipes cannot be recursive", event.start_mark)
            node = self.anchors.get(event.anchor)
            if node is not None:
                self._expanded += self._size(node)
                if self._expanded > MAX_ALIAS_NODES:
                    raise ComposerError(None, None, f"alias *{event.anchor}: YAML aliases expand this recipe by"
                                        f" more than {MAX_ALIAS_NODES} values; write the values out instead",
                                        event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise ComposerError(None, None, f"values nested more than {MAX_YAML_DEPTH} levels deep",
                                event.start_mark)
        anchor = event.anchor if isinstance(event, yaml.CollectionStartEvent) else None
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)

    def _size(self, node: yaml.Node) -> int:
        """Values in `node` with every alias inside it expanded (memoised per node)."""
        size = self._sizes.get(id(node))
        if size is None:
            if isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._size(c) for c in node.value)
            else:
                size = 1
            self._sizes[id(node)] = size
        return size


def _parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _compose_lines(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            lines[sub] = key.start_mark.line + 1
            _compose_lines(value, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _compose_lines(item, path + (i,), lines)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds union-member and model names to locations; keep the data path only.
    return tuple(
        p for p in loc
        if not (isinstance(p, str) and (p in {"Source", "tuple[Source, ...]"} or p.endswith("]") and "[" in p))
    )


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and validate a recipe; raise UsageError listing every problem with file:line."""
    path = Path(path)
    shown = _shown(path)
    try:
        if path.is_dir():
            raise UsageError(f"{shown}: is a directory, not a recipe file")
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{shown}: no such recipe file") from None
    except OSError as exc:
        raise UsageError(f"{shown}: cannot read the recipe: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise UsageError(f"{shown}: the recipe is larger than {MAX_RECIPE_BYTES >> 20} MiB; a recipe is a short file")
    try:
        text = raw.decode("utf-8")
        node, data = _parse_yaml(text)
    except UnicodeDecodeError:
        raise UsageError(f"{shown}: the recipe is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}" if mark else shown
        raise UsageError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except (ValueError, OverflowError, TypeError) as exc:  # a tagged scalar the constructor cannot build
        raise UsageError(f"{shown}: not valid YAML: a value cannot be read ({exc})") from None
    if not isinstance(data, dict) or node is None:
        raise UsageError(f"{shown}:1: a recipe is a YAML mapping with porter:, name:, source:, steps:")
    lines: dict[tuple[Any, ...], int] = {}
    _compose_lines(node, (), lines)

    errors: list[str] = []

    def err(loc: tuple[Any, ...], msg: str) -> None:
        errors.append(f"{shown}:{_line_for(loc, lines)}: {_dotted(loc)}: {msg}")

    if data.get("porter") != FORMAT_VERSION:
        err(("porter",), f"this porter reads recipe format `porter: {FORMAT_VERSION}`"
            f" (found {data.get('porter')!r})")
        raise UsageError("\n".join(errors))

    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            loc = _clean_loc(tuple(e["loc"]))
            if isinstance(data.get("source"), dict) and loc[:2] == ("source", 0):
                loc = ("source",) + loc[2:]  # a single source is written as a mapping
            msg = e["msg"].removeprefix("Value error, ").replace("a valid tuple", "a list")
            if e["type"] == "extra_forbidden":
                msg = _unknown_key(loc, data)
            err(loc, msg)

    transforms: list[Any] = []
    registry = all_transforms()
    steps = data.get("steps")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict) or not isinstance(step.get("use"), str):
            continue
        name = step["use"]
        cls = registry.get(name)
        if cls is None:
            close = difflib.get_close_matches(name, registry, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else " (see `porter transforms`)"
            err(("steps", i, "use"), f"unknown transform {name!r}{hint}")
            continue
        try:
            transforms.append(cls(cls.Params.model_validate(step.get("with") or {})))
        except ValidationError as exc:
            for e in exc.errors():
                loc = ("steps", i, "with") + tuple(e["loc"])
                msg = e["msg"].removeprefix("Value error, ")
                if e["type"] == "extra_forbidden":
                    fields = sorted(cls.Params.model_fields)
                    close = difflib.get_close_matches(str(e["loc"][-1]), fields, n=1)
                    msg = f"{cls.name} has no parameter {e['loc'][-1]!r}" + (
                        f" (did you mean {close[0]!r}?)" if close else f" (it takes: {', '.join(fields) or 'none'})"
                    )
                err(loc, msg)
    if recipe is not None:
        ids = [s.id for s in recipe.sources if s.id]
        for dup in {i for i in ids if ids.count(i) > 1}:
            err(("source",), f"two sources have id {dup!r}")
        if len(recipe.sources) > 1 and not all(s.id for s in recipe.sources):
            err(("source",), "with several sources, give each an id: (for --source ID=DIR)")
    if errors:
        raise UsageError("\n".join(errors))
    assert recipe is not None
    notes = tuple(f"{shown}:{_line_for(('steps', i, 'use'), lines)}: {note}" for i, note in order_notes(recipe))
    return LoadedRecipe(recipe=recipe, path=path, sha256=hashlib.sha256(raw).hexdigest(),
                        transforms=tuple(transforms), notes=notes)


# Transforms whose rewrites may call torch.npu (directly or through a `_porter_*` helper): a module
# they change may need the `import torch_npu` that import-order adds.
_ADDS_NPU_CALLS = ("attention-fallback", "autocast-device", "compile-bypass", "cuda-api", "hardcoded-device",
                   "mem-get-info")


def order_notes(recipe: Recipe) -> list[tuple[int, str]]:
    """(step index, note) where the steps' order leaves work undone; not errors: the port stays
    correct and the report shows what was left, but a reordered recipe ports more."""
    uses = [s.use for s in recipe.steps]
    notes = []
    for i, use in enumerate(uses):
        later = uses[i + 1:]
        if use == "cuda-api" and "hardcoded-device" in later:
            j = i + 1 + later.index("hardcoded-device")
            notes.append((i, f"step {i + 1} (cuda-api) runs before step {j + 1} (hardcoded-device): cuda-api widens"
                          " a torch.cuda.is_available() guard only when the code it guards follows the device, so"
                          " guards around hard-coded CUDA devices stay findings; put hardcoded-device first"))
        if use == "import-order":
            j = next((i + 1 + k for k, u in enumerate(later) if u in _ADDS_NPU_CALLS), None)
            if j is not None:
                notes.append((i, f"step {i + 1} (import-order) runs before step {j + 1} ({uses[j]}), whose rewrites"
                              " may call torch.npu: a module that only then calls it gets no `import torch_npu`;"
                              " put import-order last"))
    return notes


def _unknown_key(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    key = str(loc[-1])
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        ann = getattr(field, "annotation", None)
        nested = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        nested += [
            b for a in getattr(ann, "__args__", ()) for b in getattr(a, "__args__", ())
            if isinstance(b, type) and issubclass(b, BaseModel)
        ]
        if not nested:
            break
        model = nested[0]
    known = sorted((f.alias or n) for n, f in model.model_fields.items())
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"
    return f"unknown key {key!r}{hint}"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)

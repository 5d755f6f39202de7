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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from porter.errors import UsageError
from porter.transforms import all_transforms

FORMAT_VERSION = 1
_FROZEN = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _relative(value: str, what: str) -> str:
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"{what} must be a relative path inside the tree, without '..'")
    return value


class Source(BaseModel):
    """Where upstream code comes from. Exactly one of path / pypi / git / hub, always pinned."""

    model_config = _FROZEN

    id: str | None = Field(None, description="name for `--source ID=DIR`")
    into: str = Field(".", description="sub-directory of the patched package it is placed in")
    path: str | None = None
    pypi: str | None = Field(None, description="name==version")
    archive: Literal["wheel", "sdist"] = "wheel"
    sha256: str | None = Field(None, description="expected sha256 of the downloaded archive")
    git: str | None = None
    rev: str | None = Field(None, description="full 40-hex commit sha")
    hub: str | None = Field(None, description="Hugging Face repo id")
    revision: str | None = None
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
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.!+_-]+", v):
            raise ValueError(f"pypi source {v!r} must be pinned as name==version")
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
        kinds = [k for k in ("path", "pypi", "git", "hub") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "a source needs exactly one of path:, pypi:, git:, hub:"
                + (f" (found {', '.join(kinds)})" if kinds else "")
            )
        if self.git is not None and self.rev is None:
            raise ValueError("git: sources need rev: with a full commit sha")
        if self.hub is not None and self.revision is None:
            raise ValueError("hub: sources need revision: (a commit sha or tag)")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("path", "pypi", "git", "hub") if getattr(self, k) is not None)

    @property
    def label(self) -> str:
        return self.id or {
            "path": self.path,
            "pypi": self.pypi,
            "git": f"{self.git}@{self.rev}",
            "hub": f"{self.hub}@{self.revision}",
        }[self.kind]


class Step(BaseModel):
    model_config = _FROZEN

    use: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    files: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    expect: int | None = Field(None, ge=0, description="matches expected on the pinned source")
    reason: str = ""

    @field_validator("files", "exclude")
    @classmethod
    def _globs(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for g in v or ():
            _relative(g, "a files: glob")
        return v


class Package(BaseModel):
    """Packaging metadata used when the source has none of its own (hub code, plain trees)."""

    model_config = _FROZEN

    name: str | None = None
    version: str | None = None
    local_version: str = Field("npu", description="PEP 440 local label added to the version")
    dependencies: tuple[str, ...] = ()


class Scan(BaseModel):
    """Where to look for CUDA-specific code left after the steps (the report's findings)."""

    model_config = _FROZEN

    files: tuple[str, ...] = ("**/*.py",)
    exclude: tuple[str, ...] = ()

    @field_validator("files", "exclude")
    @classmethod
    def _globs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for g in v:
            _relative(g, "a scan glob")
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
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
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
    """A SafeLoader that remembers the line of every mapping key and sequence item."""


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
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{shown}: no such recipe file") from None
    except OSError as exc:
        raise UsageError(f"{shown}: cannot read the recipe: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except UnicodeDecodeError:
        raise UsageError(f"{shown}: the recipe is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}" if mark else shown
        raise UsageError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
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
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = _unknown_key(loc, data)
            err(loc, msg)

    transforms: list[Any] = []
    registry = all_transforms()
    for i, step in enumerate(data.get("steps") or []):
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

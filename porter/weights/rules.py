"""Weight rules: the schema (`WeightsSpec`, `Rule`) and the rules-file loader.

A rules file is a YAML list of rules, or a mapping `{rules: [...], verify: bool}`, the same shape as
a recipe's `weights:` section. Each rule has exactly one action:

    - rename: {from: '^model\\.layers\\.(\\d+)\\.ff\\.0\\.0\\.', to: 'model.layers.\\1.ff.0.'}
      required: true               # error if it matches no key
    - strip_prefix: "module."      # optional `match: <regex>` limits which keys it touches
    - add_prefix: "model."
    - drop: 'rotary_embed\\.inv_freq$'
    - merge: {sources: [w.frozen, w.trainable], into: w, dim: 0}

Rules run in order; each sees the names the rules before it produced. Problems are collected and
reported together as `file:line: rules[i].field: problem`.
"""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from porter.weights.errors import WeightsError, joined

ACTIONS = ("rename", "strip_prefix", "add_prefix", "drop", "merge")


@functools.lru_cache(maxsize=1024)
def compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _check_regex(pattern: str) -> str:
    try:
        compiled(pattern)
    except re.error as e:
        raise ValueError(f"bad regex {pattern!r}: {e}") from None
    return pattern


_GROUP_REF = re.compile(r"\\(?:g<([^>]*)>|(\d{1,2}))")


class Rename(BaseModel):
    """Regex rename: every match of `from` in a key is replaced by `to` (`\\1`, `\\g<name>` groups)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: str = Field(alias="from", min_length=1)
    to: str

    @field_validator("from_")
    @classmethod
    def _regex(cls, v: str) -> str:
        return _check_regex(v)

    @model_validator(mode="after")
    def _groups(self) -> "Rename":
        pattern = compiled(self.from_)
        for name, number in _GROUP_REF.findall(self.to):
            ref = name or number
            if ref.isdigit():
                if int(ref) > pattern.groups:
                    raise ValueError(
                        f"`to` refers to group {ref} but `from` has {pattern.groups} group(s)"
                    )
            elif ref not in pattern.groupindex:
                raise ValueError(f"`to` refers to group <{ref}> which `from` does not define")
        return self


class Merge(BaseModel):
    """Concatenate `sources` (in that order) along `dim` into one tensor named `into`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: tuple[str, ...] = Field(min_length=2)
    into: str = Field(min_length=1)
    dim: int = 0

    @field_validator("sources")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({s for s in v if v.count(s) > 1})
        if dupes:
            raise ValueError(f"sources name {', '.join(map(repr, dupes))} more than once")
        return v


class Rule(BaseModel):
    """One step of the key mapping: exactly one action, optionally `required`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rename: Rename | None = None
    strip_prefix: str | None = Field(default=None, min_length=1)
    add_prefix: str | None = Field(default=None, min_length=1)
    drop: str | None = Field(default=None, min_length=1)  # regex; matching keys are removed
    merge: Merge | None = None
    match: str | None = None  # regex limiting strip_prefix/add_prefix to matching keys
    required: bool = False  # the rule must match at least one key

    @field_validator("drop", "match")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return None if v is None else _check_regex(v)

    @model_validator(mode="after")
    def _one_action(self) -> "Rule":
        given = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(given) != 1:
            what = "none" if not given else ", ".join(given)
            raise ValueError(f"a rule takes exactly one of {', '.join(ACTIONS)} (got {what})")
        if self.match is not None and self.action not in ("strip_prefix", "add_prefix"):
            raise ValueError("`match` only applies to strip_prefix and add_prefix")
        return self

    @property
    def action(self) -> str:
        return next(a for a in ACTIONS if getattr(self, a) is not None)

    def describe(self) -> str:
        """A one-line human description, e.g. `rename '^a\\.' -> 'b.'`."""
        if self.rename is not None:
            text = f"rename {self.rename.from_!r} -> {self.rename.to!r}"
        elif self.merge is not None:
            text = f"merge {list(self.merge.sources)} -> {self.merge.into!r} (dim {self.merge.dim})"
        else:
            text = f"{self.action} {getattr(self, self.action)!r}"
        return text + (f" where {self.match!r}" if self.match else "")


class WeightsSpec(BaseModel):
    """A recipe's `weights:` section, and the content of a `--rules` file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[Rule, ...] = ()
    verify: bool = False


# -- loading ----------------------------------------------------------------------------------


def load_rules(path: str | Path) -> WeightsSpec:
    """Load a rules file (a YAML list of rules or a `{rules, verify}` mapping).

    Raises `WeightsError` listing every problem as `file:line: rules[i].field: problem`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WeightsError(f"{path}: rules file not found") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory, expected a YAML rules file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: cannot read rules file: {e}") from None
    return parse_rules(text, str(path))


def parse_rules(text: str, origin: str = "<rules>") -> WeightsSpec:
    """Parse rules YAML text; `origin` names it in messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark is not None else origin
        problem = getattr(e, "problem", None) or str(e)
        raise WeightsError(f"{where}: bad YAML: {problem}") from None
    if data is None:
        raise WeightsError(f"{origin}: the rules file is empty; expected a list of rules")
    wrapped = isinstance(data, list)
    if wrapped:
        data = {"rules": data}
    elif not isinstance(data, dict):
        raise WeightsError(
            f"{origin}: expected a list of rules or a mapping with `rules:`, got {type(data).__name__}"
        )
    try:
        return WeightsSpec.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            line = _line_of(node, loc[1:] if wrapped else loc)
            where = f"{origin}:{line}" if line else origin
            problems.append(f"{where}: {format_loc(loc)}: {_message(err)}")
        raise WeightsError(joined(problems)) from None


def format_loc(loc: tuple[Any, ...]) -> str:
    """`("rules", 2, "rename", "from")` -> `rules[2].rename.from`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top>"


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        known = ACTIONS + ("match", "required", "from", "to", "sources", "into", "dim", "verify", "rules")
        close = difflib.get_close_matches(key, known, n=1)
        return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc` (or of its nearest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    child = v if not isinstance(v, yaml.ScalarNode) else k
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line

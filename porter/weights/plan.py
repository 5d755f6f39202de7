"""Apply weight rules to tensor names: a pure function from (names, dtypes, shapes) to a plan.

No file is touched here, so a plan can be computed for a checkpoint on disk, a state dict in memory
or a test's list of names alike, and every problem (duplicate targets, unmatched required rules,
incompatible merges) is found before anything is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Sequence

from porter.weights.errors import WeightsError, joined
from porter.weights.format import DTYPE_BITS
from porter.weights.rules import Rule, compiled


@dataclass(frozen=True)
class SourceTensor:
    """A tensor as the rules see it: its name, dtype, shape and the shard (file) holding it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: str = ""


@dataclass(frozen=True)
class Target:
    """One output tensor: from one source tensor, or several concatenated along `dim` (a merge)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: str
    parts: tuple[SourceTensor, ...]
    dim: int | None = None  # None unless merged

    @property
    def merged(self) -> bool:
        return self.dim is not None


@dataclass(frozen=True)
class MappingRow:
    """One source key and what became of it, for the report's mapping table."""

    HEADERS: ClassVar[tuple[str, ...]] = ("old key", "new key", "dtype", "shape", "shard", "action", "rules")

    old: str
    new: str | None  # None when dropped
    dtype: str
    shape: tuple[int, ...]
    shard: str
    action: str  # "kept" | "renamed" | "dropped" | "merged"
    rules: tuple[int, ...] = ()  # indices of the rules that touched the key

    def cells(self) -> tuple[str, ...]:
        """The row as strings, in `HEADERS` order (Markdown/terminal tables)."""
        return (
            self.old,
            self.new if self.new is not None else "-",
            self.dtype,
            "[" + ", ".join(map(str, self.shape)) + "]",
            self.shard,
            self.action,
            ", ".join(f"rules[{i}]" for i in self.rules),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "old": self.old,
            "new": self.new,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "shard": self.shard,
            "action": self.action,
            "rules": list(self.rules),
        }


@dataclass(frozen=True)
class Plan:
    """The outcome of the rules over a set of names: output tensors in order and the mapping."""

    targets: tuple[Target, ...]
    rows: tuple[MappingRow, ...]
    rules: tuple[Rule, ...]
    hits: tuple[int, ...]  # how many keys each rule matched

    @property
    def unmatched(self) -> tuple[str, ...]:
        """Non-required rules that matched nothing: possible upstream drift, reported, not fatal."""
        return tuple(
            f"rules[{i}] ({r.describe()})" for i, (r, n) in enumerate(zip(self.rules, self.hits)) if n == 0
        )

    def counts(self) -> dict[str, int]:
        out = {"tensors_in": len(self.rows), "tensors_out": len(self.targets)}
        for action in ("kept", "renamed", "dropped", "merged"):
            out[action] = sum(1 for r in self.rows if r.action == action)
        out["merge_targets"] = sum(1 for t in self.targets if t.merged)
        return out


@dataclass(eq=False)  # identity: items are tracked by object, not by value
class _Item:
    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: str
    parts: tuple[SourceTensor, ...]
    dim: int | None = None
    touched: list[int] = field(default_factory=list)


def plan_keys(sources: Iterable[SourceTensor], rules: Sequence[Rule], origin: str = "") -> Plan:
    """Run `rules` over `sources` in order; raise `WeightsError` listing every problem.

    `origin` (e.g. the checkpoint path) prefixes the messages.
    """
    where = f"{origin}: " if origin else ""
    sources = list(sources)
    problems: list[str] = []
    seen: dict[str, SourceTensor] = {}
    for s in sources:
        if s.name in seen:
            problems.append(
                f"{where}tensor {s.name!r} is in both {seen[s.name].shard!r} and {s.shard!r}"
            )
        seen[s.name] = s
    items = [_Item(s.name, s.dtype, s.shape, s.shard, (s,)) for s in sources]
    dropped: dict[str, int] = {}  # source name -> index of the rule that dropped it
    hits = [0] * len(rules)

    for i, rule in enumerate(rules):
        label = f"rules[{i}] ({rule.describe()})"
        action = rule.action
        if action == "drop":
            pattern = compiled(rule.drop)  # type: ignore[arg-type]
            kept = []
            for it in items:
                if pattern.search(it.name):
                    hits[i] += 1
                    for p in it.parts:
                        dropped[p.name] = i
                    it.touched.append(i)
                else:
                    kept.append(it)
            items = kept
        elif action == "merge":
            item = _merge(items, rule, label, where, problems)
            if item is not None:
                hits[i] = 1
                item.touched.append(i)
        else:
            for it in items:
                new = _rename(it.name, rule, label, where, problems)
                if new is None:
                    continue
                hits[i] += 1
                it.touched.append(i)
                if not new:
                    problems.append(f"{where}{label}: turns {it.name!r} into an empty name")
                elif new == "__metadata__":
                    problems.append(f"{where}{label}: turns {it.name!r} into the reserved name '__metadata__'")
                it.name = new

    for i, (rule, n) in enumerate(zip(rules, hits)):
        if rule.required and n == 0:
            problems.append(
                f"{where}rules[{i}] ({rule.describe()}) is required but matched no key; "
                "check it against the checkpoint's names (upstream drift?)"
            )
    by_name: dict[str, list[_Item]] = {}
    for it in items:
        by_name.setdefault(it.name, []).append(it)
    for name, group in by_name.items():
        if len(group) > 1:
            froms = " and ".join(repr(", ".join(p.name for p in g.parts)) for g in group)
            problems.append(
                f"{where}{froms} would all become {name!r}; make the rules give distinct names "
                "or drop the extra keys"
            )
    if problems:
        raise WeightsError(joined(problems))

    targets = tuple(Target(it.name, it.dtype, it.shape, it.shard, it.parts, it.dim) for it in items)
    final = {p.name: it for it in items for p in it.parts}
    rows = []
    for s in sources:
        it = final.get(s.name)
        if it is None:
            rows.append(MappingRow(s.name, None, s.dtype, s.shape, s.shard, "dropped", (dropped[s.name],)))
            continue
        action = "merged" if it.dim is not None else ("renamed" if it.name != s.name else "kept")
        rows.append(MappingRow(s.name, it.name, s.dtype, s.shape, it.shard, action, tuple(it.touched)))
    return Plan(targets, tuple(rows), tuple(rules), tuple(hits))


def _rename(name: str, rule: Rule, label: str, where: str, problems: list[str]) -> str | None:
    """The new name, or None when the rule does not apply to `name`."""
    if rule.rename is not None:
        pattern = compiled(rule.rename.from_)
        if not pattern.search(name):
            return None
        try:
            return pattern.sub(rule.rename.to, name)
        except (re.error, IndexError) as e:
            problems.append(f"{where}{label}: bad replacement {rule.rename.to!r}: {e}")
            return None
    if rule.match is not None and not compiled(rule.match).search(name):
        return None
    if rule.strip_prefix is not None:
        return name[len(rule.strip_prefix):] if name.startswith(rule.strip_prefix) else None
    assert rule.add_prefix is not None
    return rule.add_prefix + name


def _merge(items: list[_Item], rule: Rule, label: str, where: str, problems: list[str]) -> _Item | None:
    spec = rule.merge
    assert spec is not None
    found: list[_Item] = []
    ok = True
    for src in spec.sources:
        matches = [it for it in items if it.name == src]
        if not matches:
            problems.append(f"{where}{label}: source {src!r} not found (after the rules before it)")
            ok = False
        elif len(matches) > 1:
            problems.append(f"{where}{label}: source {src!r} names {len(matches)} tensors at this point")
            ok = False
        elif matches[0].dim is not None:
            problems.append(f"{where}{label}: source {src!r} is itself a merge; merge all parts in one rule")
            ok = False
        else:
            found.append(matches[0])
    if not ok:
        return None
    first = found[0]
    ndim = len(first.shape)
    dim = spec.dim + ndim if spec.dim < 0 else spec.dim
    if not 0 <= dim < ndim:
        problems.append(f"{where}{label}: dim {spec.dim} is out of range for {ndim}-d tensor {first.name!r}")
        return None
    for it in found[1:]:
        if it.dtype != first.dtype:
            problems.append(f"{where}{label}: {it.name!r} is {it.dtype} but {first.name!r} is {first.dtype}")
            return None
        if len(it.shape) != ndim or any(a != b for d, (a, b) in enumerate(zip(it.shape, first.shape)) if d != dim):
            problems.append(
                f"{where}{label}: shapes {list(first.shape)} ({first.name!r}) and {list(it.shape)} "
                f"({it.name!r}) differ outside dim {dim}"
            )
            return None
    if math.prod(first.shape[dim + 1:]) * DTYPE_BITS.get(first.dtype, 8) % 8:
        problems.append(f"{where}{label}: {first.dtype} rows along dim {dim} do not end on byte boundaries")
        return None
    shape = list(first.shape)
    shape[dim] = sum(it.shape[dim] for it in found)
    merged = _Item(
        spec.into,
        first.dtype,
        tuple(shape),
        first.shard,
        tuple(it.parts[0] for it in found),
        dim,
        sorted({i for it in found for i in it.touched}),
    )
    position = min(items.index(it) for it in found)
    for it in found:
        items.remove(it)
    items.insert(position, merged)
    return merged

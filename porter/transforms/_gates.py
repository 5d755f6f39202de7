"""Gates: branches whose device test must *not* be widened to admit npu.

A device check normally protects code that works on any CUDA-like device, so widening it
(`d.type == "cuda"` -> `d.type in ("cuda", "npu")`, the job of widen-device-check) is safe. Two
kinds of branch are the exception, because what they protect does not exist on npu:

compile gate
    The branch decides whether `torch.compile` or CUDA graphs run. Widening it switches
    compile/graph capture on for npu, which is exactly what compile-bypass keeps off. Shapes:

    * an `if`/`elif`/`while` or conditional expression any of whose branches (body, `elif`s,
      `else`) uses a compile/graph API (`torch.compile`, `torch.cuda.graph`,
      `torch.cuda.CUDAGraph`, `torch.cuda.make_graphed_callables`, `torch._dynamo.optimize`) or
      calls a function whose name says it compiles or captures graphs (`self.model.capture_model(...)`,
      `compile_model(m)`, `setup_cuda_graphs()`, `module.compile()`; `re.compile` and the builtin
      `compile` do not count);
    * a guard clause, `if dev != "cuda": raise/return ...`, whose message mentions compiling
      or CUDA graphs, or (when the caller passes the statements that follow it in the same
      block) that is followed by such a use. voxcpm's `optimize()` has this shape.

flash gate
    The branch decides whether a flash-attention kernel (CUDA-only, no npu build) runs: any
    branch references a `flash_attn` API or calls a function named `*flash*`, or produces a
    flash implementation name (`return "flash_attention_2"`, `"flash_attention_2" if ... else`);
    or a guard clause (`if q.device.type != "cuda": raise ValueError("flash_attention_2 requires
    CUDA tensors.")`, seed 001 change C) whose message mentions flash attention or that is
    followed by flash-attention calls. attention-fallback decides what npu does there;
    widen-device-check leaves it alone.

Both transforms (and widen-device-check, cuda-api) call these predicates on *original* nodes.
`names`, when given, resolves a node to the fully qualified names it refers to through imports
(`Rewriter.imported_names`), so aliases (`import torch as t`, `from torch import compile as c`)
are recognised and a local shadow (a parameter named `torch`) is not; without it the dotted
spelling is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Sequence

import libcst as cst
from libcst.helpers import get_full_name_for_node

from porter.transforms._npu_runtime import string_value as _string_value

Names = Callable[[cst.CSTNode], "set[str]"]
GateKind = Literal["compile", "flash"]

COMPILE_APIS = frozenset(
    {
        "torch.compile",
        "torch._dynamo.optimize",
        "torch.cuda.graph",
        "torch.cuda.CUDAGraph",
        "torch.cuda.make_graphed_callables",
        "torch.cuda.graphs.graph",
        "torch.cuda.graphs.CUDAGraph",
        "torch.cuda.graphs.make_graphed_callables",
    }
)
FLASH_IMPLEMENTATIONS = frozenset({"flash_attention_2", "flash_attention_3"})
_NOT_COMPILE = frozenset({"re.compile", "regex.compile", "builtins.compile", "compile"})
_EXITS = (cst.Raise, cst.Return, cst.Continue, cst.Break)
_COMPILE_WORDS = re.compile(r"compil|cuda ?graph|cudagraph|graph capture", re.I)
_FLASH_WORDS = re.compile(r"flash", re.I)


def _tokens(name: str) -> set[str]:
    return {t for t in name.lower().split("_") if t}


def compile_hint(name: str) -> bool:
    """Whether a function named `name` compiles or captures CUDA graphs, judged by its name."""
    tokens = _tokens(name)
    return bool(
        tokens & {"compile", "compiled", "capture", "cudagraph", "cudagraphs", "graphed"}
        or ("cuda" in tokens and tokens & {"graph", "graphs"})
    )


def flash_hint(name: str) -> bool:
    """Whether a function named `name` runs flash attention, judged by its name."""
    return "flash" in name.lower()


def is_compile_function(node: cst.FunctionDef) -> bool:
    """A function whose name says it decides about or performs compilation/graph capture
    (transformers' `_valid_auto_compile_criteria`, higgs-audio's `capture_model`); device
    tests inside it are compile decisions."""
    return compile_hint(node.name.value)


# -- walking ------------------------------------------------------------------------------------
def _walk(node: cst.CSTNode, parent: cst.CSTNode | None = None) -> Iterator[tuple[cst.CSTNode, cst.CSTNode | None]]:
    yield node, parent
    for child in node.children:
        yield from _walk(child, node)


def _resolved(node: cst.CSTNode, names: Names | None) -> set[str]:
    if names is not None:
        return set(names(node))
    spelled = get_full_name_for_node(node)
    return {spelled} if spelled else set()


def _uses_compile(tree: cst.CSTNode, names: Names | None) -> bool:
    for node, parent in _walk(tree):
        if isinstance(node, (cst.Attribute, cst.Name)):
            if isinstance(parent, cst.Attribute) and parent.value is node:
                continue  # only whole dotted names
            if _resolved(node, names) & COMPILE_APIS:
                return True
            if isinstance(parent, cst.Call) and parent.func is node:
                full = get_full_name_for_node(node) or ""
                last = full.rsplit(".", 1)[-1]
                resolved = _resolved(node, names)
                if resolved & _NOT_COMPILE or full in _NOT_COMPILE:
                    continue  # re.compile, the builtin compile
                if compile_hint(last):
                    return True
    return False


def _uses_flash(tree: cst.CSTNode, names: Names | None) -> bool:
    for node, parent in _walk(tree):
        if isinstance(node, (cst.Attribute, cst.Name)):
            if isinstance(parent, cst.Attribute) and parent.value is node:
                continue
            resolved = _resolved(node, names)
            if any(q == "flash_attn" or q.startswith("flash_attn.") for q in resolved):
                return True
            if isinstance(parent, cst.Call) and parent.func is node:
                full = get_full_name_for_node(node) or ""
                if flash_hint(full.rsplit(".", 1)[-1]):
                    return True
        elif isinstance(node, cst.SimpleString) and not isinstance(parent, (cst.Comparison, cst.ComparisonTarget)):
            if _string_value(node) in FLASH_IMPLEMENTATIONS and not isinstance(parent, cst.Expr):
                return True
    return False


def _branches(node: cst.CSTNode) -> list[cst.CSTNode]:
    """The code a branch statement chooses between (never its test)."""
    if isinstance(node, cst.IfExp):
        return [node.body, node.orelse]
    if isinstance(node, cst.If):
        out: list[cst.CSTNode] = [node.body]
        if isinstance(node.orelse, cst.If):
            out.extend(_branches(node.orelse))
            out.append(node.orelse.test)  # an elif's test runs only when this test fails
        elif isinstance(node.orelse, cst.Else):
            out.append(node.orelse.body)
        return out
    if isinstance(node, cst.While):
        out = [node.body]
        if node.orelse is not None:
            out.append(node.orelse.body)
        return out
    return []


def exits(node: cst.CSTNode) -> bool:
    """Whether a branch's body ends in raise/return/continue/break (a guard clause)."""
    body = getattr(node, "body", None)
    stmts = getattr(body, "body", ())
    if not stmts:
        return False
    last = stmts[-1]
    return isinstance(last, cst.SimpleStatementLine) and isinstance(last.body[-1], _EXITS)


def _messages(node: cst.CSTNode) -> str:
    return " ".join(
        v for n, _ in _walk(getattr(node, "body", node)) if (v := _string_value(n)) is not None
    ) + " ".join(
        part.value
        for n, _ in _walk(getattr(node, "body", node))
        if isinstance(n, cst.FormattedString)
        for part in n.parts
        if isinstance(part, cst.FormattedStringText)
    )


def is_compile_gate(
    node: cst.CSTNode,
    *,
    names: Names | None = None,
    following: Sequence[cst.CSTNode] = (),
) -> bool:
    """Whether `node` (an If, IfExp or While) decides whether torch.compile / CUDA graphs run.

    See the module docstring for the shapes. `following` are the statements after `node` in its
    block, used for guard clauses (`if dev != "cuda": raise ...` then compile).
    """
    if not isinstance(node, (cst.If, cst.IfExp, cst.While)):
        return False
    if any(_uses_compile(b, names) for b in _branches(node)):
        return True
    if isinstance(node, (cst.If, cst.While)) and exits(node):
        if _COMPILE_WORDS.search(_messages(node)):
            return True
        return any(_uses_compile(s, names) for s in following)
    return False


def is_flash_gate(
    node: cst.CSTNode,
    *,
    names: Names | None = None,
    following: Sequence[cst.CSTNode] = (),
) -> bool:
    """Whether `node` (an If, IfExp or While) decides whether a flash-attention kernel runs."""
    if not isinstance(node, (cst.If, cst.IfExp, cst.While)):
        return False
    if any(_uses_flash(b, names) for b in _branches(node)):
        return True
    if isinstance(node, (cst.If, cst.While)) and exits(node):
        if _FLASH_WORDS.search(_messages(node)):
            return True
        return any(_uses_flash(s, names) for s in following)
    return False


def gate_kind(
    node: cst.CSTNode,
    *,
    names: Names | None = None,
    following: Sequence[cst.CSTNode] = (),
) -> GateKind | None:
    """"compile" or "flash" when widening `node`'s device test would be wrong, else None."""
    if is_compile_gate(node, names=names, following=following):
        return "compile"
    if is_flash_gate(node, names=names, following=following):
        return "flash"
    return None


def is_gate(node: cst.CSTNode, *, names: Names | None = None, following: Sequence[cst.CSTNode] = ()) -> bool:
    """Whether widen-device-check must leave `node`'s test alone (a compile or a flash gate)."""
    return gate_kind(node, names=names, following=following) is not None


def following_statements(
    node: cst.CSTNode, parent_of: Callable[[cst.CSTNode], cst.CSTNode | None]
) -> list[cst.CSTNode]:
    """The statements after `node` in the block that holds it (for guard clauses)."""
    block = parent_of(node)
    if not isinstance(block, (cst.IndentedBlock, cst.Module)):
        return []  # an elif (parent: the if) or a one-line suite
    siblings = list(block.body)
    for i, s in enumerate(siblings):
        if s is node:
            return siblings[i + 1 :]
    return []


@dataclass
class Index:
    """One pass over a module: its nodes in source order and their parents, for transforms that
    plan every rewrite before the traversal. porter's own `_porter_*` helpers are not indexed."""

    nodes: list[cst.CSTNode] = field(default_factory=list)
    parents: dict[cst.CSTNode, cst.CSTNode] = field(default_factory=dict)

    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self.parents.get(node)

    def ancestors(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        p = self.parents.get(node)
        while p is not None:
            yield p
            p = self.parents.get(p)


def index(module: cst.Module) -> Index:
    out = Index()
    stack: list[cst.CSTNode] = []

    class Visitor(cst.CSTVisitor):
        def on_visit(self, node: cst.CSTNode) -> bool:
            if isinstance(node, cst.FunctionDef) and node.name.value.startswith("_porter_"):
                stack.append(node)  # on_leave still runs for it
                return False
            if stack:
                out.parents[node] = stack[-1]
            stack.append(node)
            out.nodes.append(node)
            return True

        def on_leave(self, original_node: cst.CSTNode) -> None:
            stack.pop()

    module.visit(Visitor())
    return out


def root_name(node: cst.CSTNode) -> str | None:
    """`a` for `a`, `a.b.c`; None for anything else (calls, subscripts...)."""
    while isinstance(node, cst.Attribute):
        node = node.value
    return node.value if isinstance(node, cst.Name) else None


def enclosing_gate(
    node: cst.CSTNode,
    parent_of: Callable[[cst.CSTNode], cst.CSTNode | None],
    *,
    names: Names | None = None,
) -> tuple[GateKind, cst.CSTNode] | None:
    """The gate whose *test* contains `node` (e.g. a device comparison), with its kind, or None.

    `parent_of` maps a node to its parent (`ParentNodeProvider`). A comparison inside a function
    named like a compile decision (`is_compile_function`) counts as a compile gate too.
    """
    child = node
    while True:
        parent = parent_of(child)
        if parent is None or isinstance(parent, (cst.ClassDef, cst.Module)):
            return None
        if isinstance(parent, cst.FunctionDef):
            return ("compile", parent) if is_compile_function(parent) else None
        if isinstance(parent, (cst.If, cst.IfExp, cst.While)) and parent.test is child:
            kind = gate_kind(parent, names=names, following=following_statements(parent, parent_of))
            if kind is not None:
                return kind, parent
        child = parent

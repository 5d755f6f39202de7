"""`porter scan SOURCE`: every CUDA-specific site of an upstream, by subsystem, for a person or a tool.

SOURCE is a recipe, a local directory or a one-line source spec (`pypi:NAME==VERSION`,
`git:URL@SHA40`, `hub:REPO@REVISION`, `ms:REPO@REVISION`). Each site comes from the site analysis
(`porter.analysis`: category, rewrite / keep / decision, the transform that owns it); this module
groups them by subsystem (a top-level folder, or the folders of the one top-level package), flags
the parts of the tree that are CUDA-only by construction (a vendored vLLM or TensorRT runtime,
custom-kernel folders, training or evaluation scripts) with the evidence, and renders the result
as Markdown, JSON or SARIF 2.1.0 (GitHub code scanning shows SARIF results inline in a PR).
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable
from urllib.parse import quote

from porter import __version__
from porter.analysis import Site, analyse_source

# What each category of the site analysis means (AUDIT.md's categories), for people and SARIF rules.
CATEGORIES = {
    "device_check": "a device compared with \"cuda\" (or `.is_cuda`): npu takes the CUDA branch",
    "compile_gate": "a device check that switches torch.compile or CUDA graphs on: stays CUDA-only",
    "kernel_gate": "a device check that enables a custom CUDA kernel: stays CUDA-only",
    "hardcoded_device": "a hard-coded CUDA device (\"cuda\", .cuda(), map_location/device_map)",
    "cuda_api": "a torch.cuda call (npu counterpart, CUDA-only property, or availability test)",
    "autocast": "a CUDA autocast region or autocast state query",
    "compile": "torch.compile or CUDA-graph capture",
    "attention_backend": "a flash-attention request, call or SDPA backend choice",
    "cuda_only_import": "an import of a package that is CUDA-only or may not load (flash_attn, deepspeed, ...)",
    "custom_kernel": "a custom CUDA kernel (triton, cpp_extension, CuPy, nvcc)",
    "dtype": "a dtype choice tied to CUDA (bf16/fp16 support, TF32)",
    "other": "another CUDA-specific construct",
}
LEVEL = {"rewrite": "note", "keep": "note", "decision": "warning"}


def _analyse_source(path: str, text: str) -> list[Site]:
    """The sites of one Python file, as porter.analysis classifies them (the transforms read the same
    record); sites inside code porter wrote are not upstream's."""
    return [s for s in analyse_source(path, text) if not s.ported]


# -- subsystems and what is CUDA-only by construction ------------------------------------------
_TRT = re.compile(r"^(?:import|from)\s+(?:tensorrt_llm|tensorrt|pycuda)\b.*", re.M)  # module level only
_KERNEL_DEF = re.compile(r"^\s*@triton\.(?:jit|autotune)\b|\b(?:load_inline|CUDAExtension)\(", re.M)
_KERNEL = re.compile(r"^\s*(?:@triton\.jit|@triton\.autotune|.*\b(?:load_inline|CUDAExtension|cpp_extension\.load)\b"
                     r"|(?:import|from)\s+(?:triton|cupy|pycuda)\b)", re.M)
_TRAIN_NAME = re.compile(r"(?i)^(train|training|trainer|trainers|finetune|fine_tune|finetuning|eval|evals|evaluation|"
                         r"evaluate|benchmark|benchmarks|bench)$")
_TRAIN_FILE = re.compile(r"(?i)^(train|finetune|fine_tune|eval|evaluate|benchmark)[\w-]*\.py$")
_RUNTIME_NAME = re.compile(r"(?i)^(vllm|tensorrt|trt|trtllm|tensorrt_llm|sglang|lmdeploy)$")
_KERNEL_NAME = re.compile(r"(?i)^(kernels?|csrc|cuda_kernels?|cuda|ops_cuda|triton_kernels?)$")
_NATIVE = (".cu", ".cuh")


@dataclass(frozen=True)
class CudaOnly:
    """A part of the tree that is CUDA-only by construction (proposed as `exclude:`)."""

    glob: str  # "pkg/training/**" or one file
    kind: str  # "vLLM/TensorRT runtime" | "custom CUDA kernels" | "training or evaluation"
    evidence: tuple[str, ...]


@dataclass
class ScanResult:
    source: str
    files: int = 0  # Python files analysed
    lines: int = 0
    sites: list[Site] = field(default_factory=list)
    subsystems: dict[str, list[Site]] = field(default_factory=dict)
    cuda_only: list[CudaOnly] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    single_top: str | None = None  # the one top-level package all code lives in, if any
    # file -> its path from the current directory, for files of a local directory source that lie
    # inside it (a checkout's own files: GitHub code scanning places results by repository path)
    here: dict[str, str] = field(default_factory=dict)

    def count(self, action: str) -> int:
        return sum(1 for s in self.sites if s.action == action)

    def subsystem_of(self, path: str) -> str:
        return _subsystem(path, self.single_top)


def _single_top(paths: Iterable[str]) -> str | None:
    """The one top-level package all code lives in (a wheel's `pkg/`), or None."""
    tops = {PurePosixPath(p).parts[0] for p in paths if len(PurePosixPath(p).parts) > 1}
    return next(iter(tops)) if len(tops) == 1 else None


def _subsystem(path: str, single_top: str | None) -> str:
    parts = PurePosixPath(path).parts
    if len(parts) == 1:
        return "."
    if single_top and parts[0] == single_top and len(parts) > 2:
        return f"{parts[0]}/{parts[1]}"
    return parts[0]


def analyse_files(files: dict[str, Path], label: str) -> ScanResult:
    """Sites and CUDA-only parts of a tree given as {relative posix path: file on disk}."""
    py = sorted(p for p in files if p.endswith(".py"))
    res = ScanResult(source=label)
    res.single_top = _single_top(py)
    texts: dict[str, str] = {}
    for rel in py:
        try:
            text = files[rel].read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            res.skipped.append((rel, f"not UTF-8 (byte {exc.start})"))
            continue
        except OSError as exc:
            res.skipped.append((rel, f"cannot be read: {exc.strerror}"))
            continue
        texts[rel] = text
        res.files += 1
        res.lines += text.count("\n") + 1
        res.sites.extend(_analyse_source(rel, text))
    res.sites.sort(key=lambda s: (s.file, s.line, s.category))
    for s in res.sites:
        res.subsystems.setdefault(res.subsystem_of(s.file), []).append(s)
    res.subsystems = dict(sorted(res.subsystems.items()))
    res.cuda_only = _cuda_only(files, texts, res)
    return res


def _cuda_only(files: dict[str, Path], texts: dict[str, str], res: ScanResult) -> list[CudaOnly]:
    """Folders and files that are CUDA-only by construction, outermost first, with the evidence.

    A vendored runtime is a folder named like one (`vllm/`, `tensorrt_llm/`, `trt/`); a module that
    merely uses an installed vLLM is not (vLLM has an Ascend plugin), one importing TensorRT or
    PyCUDA at module level is. Kernels: a folder holding `.cu`/`.cuh` files, or a kernel-named
    folder (`kernels/`, `csrc/`) with Triton, `load_inline` or `CUDAExtension` code, or a module
    defining Triton kernels. Training/evaluation: a folder so named, or such a script (`__main__`).
    """
    dirs: dict[str, list[str]] = {}
    for rel in sorted(files):
        parts = PurePosixPath(rel).parts
        for i in range(1, len(parts)):
            dirs.setdefault("/".join(parts[:i]), []).append(rel)
    out: list[CudaOnly] = []
    flagged: list[str] = []
    for d in sorted(dirs):  # a folder sorts before the folders inside it
        if d == res.single_top or any(d.startswith(f + "/") for f in flagged):
            continue
        name = PurePosixPath(d).name
        members = dirs[d]
        py = [m for m in members if m in texts]
        native = [m for m in members if m.endswith(_NATIVE) and PurePosixPath(m).parent.as_posix() == d]
        kernel = [_evidence(m, texts[m], _KERNEL) for m in py if _KERNEL.search(texts[m])]
        if _RUNTIME_NAME.match(name):
            found = CudaOnly(f"{d}/**", "vendored vLLM/TensorRT runtime",
                             (f"folder name {name!r}: a copy of the runtime, {len(py)} Python files",))
        elif native or (_KERNEL_NAME.match(name) and kernel):
            found = CudaOnly(f"{d}/**", "custom CUDA kernels",
                             tuple([f"{m}: CUDA source" for m in native[:5]] + kernel[:5]))
        elif _TRAIN_NAME.match(name):
            n = sum(1 for s in res.sites if s.file.startswith(d + "/"))
            found = CudaOnly(f"{d}/**", "training or evaluation",
                             (f"folder name {name!r}: not on the inference path",
                              f"{len(py)} Python files, {n} CUDA-specific sites"))
        else:
            continue
        flagged.append(d)
        out.append(found)
    for rel, text in sorted(texts.items()):
        if any(rel.startswith(f + "/") for f in flagged):
            continue
        fname = PurePosixPath(rel).name
        if _TRT.search(text):
            out.append(CudaOnly(rel, "TensorRT/PyCUDA runtime", (_evidence(rel, text, _TRT),)))
        elif _KERNEL_DEF.search(text):
            out.append(CudaOnly(rel, "custom CUDA kernels", (_evidence(rel, text, _KERNEL_DEF),)))
        elif _TRAIN_FILE.match(fname) and "__main__" in text:
            out.append(CudaOnly(rel, "training or evaluation", (f"{rel}: a {fname.split('.')[0]} script (__main__)",)))
    return out


def _evidence(rel: str, text: str, pattern: re.Pattern[str]) -> str:
    m = pattern.search(text)
    assert m is not None
    line = text.count("\n", 0, m.start()) + 1
    return f"{rel}:{line}: {m.group(0).strip()[:100]}"


# -- sources ----------------------------------------------------------------------------------
def resolve_source(text: str) -> tuple[Any, Path]:
    """SOURCE as given on the command line -> (a recipe Source, the directory it is relative to)."""
    from porter.source import parse_spec

    return parse_spec(text), Path.cwd()


def fetch_sources(sources: tuple[Any, ...], base: Path, command: str) -> Any:
    """fetch_tree for `scan` and `init`, which have no --source option: where the fetch error
    suggests one, the fix is to give the local copy as SOURCE."""
    from porter.errors import UsageError
    from porter.source import fetch_tree

    try:
        return fetch_tree(sources, base, {})
    except UsageError as exc:
        if "--source" not in str(exc):
            raise
        raise UsageError(f"{exc}\n  (`porter {command}` takes that directory as SOURCE: `porter {command} DIR ...`)"
                         ) from None


def is_recipe(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) and Path(text).is_file()


def scan(source: str) -> ScanResult:
    """Fetch SOURCE (cached) and analyse every Python file in it."""
    if is_recipe(source):
        from porter.recipe import load_recipe

        loaded = load_recipe(source)
        sources, base = tuple(loaded.recipe.sources), loaded.path.parent
        label = f"{source} ({', '.join(s.label for s in sources)})"
    else:
        spec, base = resolve_source(source)
        sources, label = (spec,), source
    tree = fetch_sources(sources, base, "scan")
    res = analyse_files(tree.files, label)
    res.skipped[:0] = tree.skipped
    res.here = _here(tree.files, [Path(base, s.path) for s in sources if s.kind == "path"])
    return res


def _here(files: dict[str, Path], local: list[Path]) -> dict[str, str]:
    """Paths from the current directory of the Python files of local directory sources inside it."""
    cwd = Path.cwd().resolve()
    roots = [r.resolve() for r in local]
    out = {}
    for rel, path in files.items():
        if not rel.endswith(".py"):
            continue
        try:
            real = path.resolve()
            if any(real.is_relative_to(r) for r in roots):
                out[rel] = real.relative_to(cwd).as_posix()
        except (ValueError, OSError):
            continue
    return out


# -- rendering --------------------------------------------------------------------------------
def summary(res: ScanResult) -> dict[str, Any]:
    return {"files": res.files, "lines": res.lines, "sites": len(res.sites), "rewrite": res.count("rewrite"),
            "keep": res.count("keep"), "decision": res.count("decision"), "cuda_only": len(res.cuda_only)}


def to_json(res: ScanResult) -> dict[str, Any]:
    return {
        "porter_version": __version__,
        "source": res.source,
        "summary": summary(res),
        "subsystems": [
            {"name": name, "sites": len(sites),
             **{a: sum(1 for s in sites if s.action == a) for a in ("rewrite", "keep", "decision")},
             "cuda_only": [asdict(c) for c in res.cuda_only if c.glob == f"{name}/**"]}
            for name, sites in res.subsystems.items()
        ],
        "cuda_only": [asdict(c) for c in res.cuda_only],
        "sites": [asdict(s) | {"subsystem": res.subsystem_of(s.file)} for s in res.sites],
        "skipped": [{"path": p, "reason": r} for p, r in res.skipped],
    }


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def to_markdown(res: ScanResult) -> str:
    s = summary(res)
    out = [f"# porter scan: {res.source}", "",
           f"{s['files']} Python files, {s['lines']} lines: **{_n(s['sites'], 'CUDA-specific site')}**"
           f" ({s['rewrite']} rewrite, {s['keep']} kept as gates, {_n(s['decision'], 'decision')}),"
           f" {_n(s['cuda_only'], 'part')} CUDA-only by construction.", ""]
    if res.cuda_only:
        out += ["## CUDA-only by construction (proposed `exclude:`)", "",
                "| part | kind | evidence |", "|---|---|---|"]
        out += [f"| `{c.glob}` | {c.kind} | {_cell('; '.join(c.evidence))} |" for c in res.cuda_only]
        out.append("")
    for name, sites in res.subsystems.items():
        counts = ", ".join(f"{sum(1 for x in sites if x.action == a)} {a}" for a in ("rewrite", "keep", "decision"))
        out += [f"## `{name}`: {_n(len(sites), 'site')} ({counts})", "",
                "| where | category | action | transform | code | why |", "|---|---|---|---|---|---|"]
        out += [f"| {x.file}:{x.line} | {x.category} | {x.action} | {x.transform or '(none)'} |"
                f" `{_cell(x.code[:90])}` | {_cell(x.reason)} |" for x in sites]
        out.append("")
    if res.skipped:
        out += ["## Not analysed", ""] + [f"- {p}: {r}" for p, r in res.skipped] + [""]
    out.append("Next: `porter init SOURCE --name NAME` drafts a recipe from these sites.")
    return "\n".join(out) + "\n"


def _rule_help(category: str, sites: list[Site]) -> tuple[str, str]:
    """(text, markdown) help for a category: what it is, and the documentation (the text `porter
    explain` prints) of each transform the analysis names as the owner of one of its sites."""
    from porter.transforms import all_transforms

    owners = sorted({s.transform for s in sites if s.transform})
    text = [CATEGORIES.get(category, category) + "."]
    registry = all_transforms()
    for name in owners:
        cls = registry.get(name)
        if cls is None:
            continue
        doc = textwrap.dedent(cls.__doc__ or "").strip()
        text += ["", f"{name} [safety: {cls.safety.value}] (porter explain {name}):", doc]
    if any(not s.transform for s in sites):
        text += ["", "No transform rewrites some of these: they are a decision for the person porting (exclude"
                 " the code, or a recipe-specific edit: replace-call, replace-text-in-function)."]
    plain = "\n".join(text)
    md = "\n".join(text).replace("(porter explain ", "(`porter explain ").replace("):\n", "`):\n")
    return plain, md


def to_sarif(res: ScanResult) -> dict[str, Any]:
    """SARIF 2.1.0: one result per site, ruleId = category, a physical location (the site's lines; the
    column of its anchor where the anchor is on the first line), a message naming action and owner.
    A file inside the current directory is named by its path from there (run from a checkout's root,
    GitHub shows the result on that file); any other by its path in the source."""
    order = list(CATEGORIES)
    used = sorted({s.category for s in res.sites}, key=lambda c: (order.index(c) if c in order else len(order), c))
    rules = []
    for cat in used:
        plain, md = _rule_help(cat, [s for s in res.sites if s.category == cat])
        rules.append({
            "id": cat,
            "name": "".join(p.title() for p in cat.split("_")),
            "shortDescription": {"text": CATEGORIES.get(cat, cat)},
            "fullDescription": {"text": plain.split("\n\n")[0]},
            "help": {"text": plain, "markdown": md},
            "defaultConfiguration": {"level": "note"},
        })
    index = {r["id"]: i for i, r in enumerate(rules)}
    results = []
    for s in res.sites:
        owner = s.transform or "no transform"
        lines = {"startLine": max(1, s.line), "endLine": max(s.line, s.end_line, 1)}
        context = lines | ({"snippet": {"text": s.code}} if lines["startLine"] == lines["endLine"] else {})
        results.append({
            "ruleId": s.category,
            "ruleIndex": index[s.category],
            "level": LEVEL.get(s.action, "note"),
            "message": {"text": f"{s.action} ({owner}): {s.reason}"},
            "locations": [{"physicalLocation": {
                "artifactLocation": {"uri": quote(res.here.get(s.file, s.file)), "uriBaseId": "SRCROOT"},
                "region": lines | ({"startColumn": s.col + 1} if s.anchor_line == s.line else {}),
                "contextRegion": context,  # the whole lines (the snippet where it is one line)
            }}],
            "properties": {"action": s.action, "transform": s.transform, "subsystem": res.subsystem_of(s.file)},
        })
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "porter", "version": __version__, "semanticVersion": __version__,
                                "rules": rules}},
            "automationDetails": {"id": f"porter-scan/{res.source}"},
            "columnKind": "unicodeCodePoints",  # Site.col counts characters
            "results": results,
            "properties": {"summary": summary(res), "cuda_only": [asdict(c) for c in res.cuda_only]},
        }],
    }


def render(res: ScanResult, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(to_json(res), indent=2) + "\n"
    if fmt == "sarif":
        return json.dumps(to_sarif(res), indent=2) + "\n"
    return to_markdown(res)

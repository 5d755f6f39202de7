"""`porter init SOURCE --name NAME`: draft a recipe a reviewer would accept as a starting point.

The draft holds the pinned source (with the archive's sha256 for PyPI), the generic steps in the
README's order with their parameters (the imports that may not load, found in the package, are
filled in), `expect:` counts measured by running those steps on this source, the CUDA-only parts
the scan flags proposed as `exclude:` with their evidence as YAML comments, every decision site as
a comment under the step that reports it, and a `smoke:` section with a smoke script skeleton.
When the package defines transformers `PretrainedConfig`/`PreTrainedModel` subclasses the script
builds a tiny one (the config shrunk automatically) and drives it; otherwise it is a skeleton
whose TODOs fail loudly. The draft validates and applies on the source it was drafted from.
"""

from __future__ import annotations

import ast
import email.parser
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from porter.errors import UsageError
from porter.scan_report import ScanResult, analyse_files, fetch_sources, resolve_source

# The generic steps, in the README's documented order, with the reason each one gives.
GENERIC_STEPS: tuple[tuple[str, str], ...] = (
    ("lazy-import", "the package imports where {modules} cannot load (CPU torch, Ascend)"),
    ("guard-import", "{modules} may be installed yet fail to load; the modules still import"),
    ("attention-fallback", "flash-attention requests fall back to SDPA on npu; CUDA keeps flash"),
    ("compile-bypass", "torch.compile and CUDA graphs stay off on npu; CUDA compiles as before"),
    ("autocast-device", "CUDA autocast regions follow the device instead of switching off on npu"),
    ("hardcoded-device", "hard-coded CUDA devices become a run-time choice, npu when available"),
    ("mem-get-info", "free-memory queries answer on npu with torch_npu's real figures"),
    ("cuda-api", "torch.cuda calls with an npu counterpart follow the device in use"),
    ("widen-device-check", "npu takes the CUDA branches where that is safe; gates stay CUDA-only"),
    ("import-order", "packages that must load before torch_npu are imported first"),
)
LAZY_MODULES = ("torchaudio", "torchvision")  # may be installed yet fail to load next to host torch
GUARD_MODULES = ("deepspeed", "apex", "xformers", "bitsandbytes")
HOST_PACKAGES = {"torch", "torchaudio", "torchvision", "torch-npu", "torch_npu", "triton"}
MAX_LISTED = 25  # decision sites listed per step; the rest is counted
# Proposed, not set: what the seed ports export on Ascend hosts (README: Runtime settings).
RUNTIME_HINT = [
    "# npu runtime settings, applied where torch_npu is installed by the package's helper module when",
    "# the package is imported (a value the user set wins); uncomment to use (README: Runtime settings)",
    "# runtime:",
    '#   env: {PYTORCH_NPU_ALLOC_CONF: "expandable_segments:True"}',
]


@dataclass
class Draft:
    recipe: Path
    smoke_script: Path
    scan: ScanResult
    counts: dict[str, int] = field(default_factory=dict)
    excludes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    smoke_kind: str = ""

    def summary_lines(self) -> list[str]:
        c = self.counts
        return [
            f"wrote {self.recipe} and {self.smoke_script} ({self.smoke_kind}) in {self.seconds:.1f} s",
            f"  {c['sites']} CUDA-specific sites ({c['rewrite']} rewrite, {c['keep']} keep, {c['decision']}"
            f" decision, as `porter scan` lists them); the steps match {c['matches']} times (their expect:"
            f" counts); {c['listed']} decision(s) and kept gate(s) listed as comments;"
            f" {len(self.excludes)} exclude(s) proposed",
            f"  next: review it, then `porter apply {self.recipe}`",
        ]


def draft(source: str, name: str, *, out: Path | None = None, force: bool = False,
          progress: Callable[[str], None] = lambda _m: None) -> Draft:
    t0 = time.perf_counter()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
        raise UsageError(f"--name {name!r}: use lowercase letters, digits, '_', '.', '-' (it names"
                         " patched_models/<name>/ and the recipe file)")
    recipe_path = out or Path("recipes") / f"{name}.yaml"
    spec, base = resolve_source(source)
    progress(f"source: {spec.label}")
    tree = fetch_sources((spec,), base, "init")
    fetched = tree.sources[0]
    scan = analyse_files(tree.files, source)
    tops = _top_modules(tree.files)
    script_name = _smoke_name(name, tops)
    script_path = recipe_path.parent / "smoke" / script_name
    for p in (recipe_path, script_path):
        if p.exists() and not force:
            raise UsageError(f"{p} exists; pass --force to overwrite it (or --out for another file)")

    texts = _texts(tree.files)
    excludes = [c.glob for c in scan.cuda_only]
    excluded = _excluder(excludes)
    imports = _module_imports({p: t for p, t in texts.items() if not excluded(p)})
    lazy = sorted(m for m in LAZY_MODULES if m in imports)
    guard = sorted(m for m in GUARD_MODULES if m in imports)

    source_yaml = _source_yaml(spec, fetched.provenance, recipe_path.parent)
    steps = []
    for use, why in GENERIC_STEPS:
        params: dict[str, Any] = {}
        if use == "lazy-import":
            if not lazy:
                continue
            params = {"modules": lazy}
        elif use == "guard-import":
            if not guard:
                continue
            params = {"modules": guard}
        mods = params.get("modules", [])
        steps.append({"use": use, "with": params, "exclude": excludes,
                      "reason": why.format(modules=", ".join(mods))})

    # Measure the steps on this source: the expect: counts and what each step reports.
    recipe_path.parent.mkdir(parents=True, exist_ok=True)
    progress(f"running {len(steps)} generic steps on the source to take the expect: counts")
    counts, findings = _measure(name, source_yaml, steps, recipe_path.parent)

    smoke_yaml, script_text, smoke_kind = _smoke(name, script_name, tree, texts, fetched)
    text = _render(name, spec, fetched, source_yaml, steps, counts, findings, scan, smoke_yaml)
    script_path.parent.mkdir(parents=True, exist_ok=True)
    _write(script_path, script_text)
    _write(recipe_path, text)
    from porter.recipe import load_recipe

    try:
        load_recipe(recipe_path)
    except UsageError as exc:  # a porter bug: the draft must validate
        raise RuntimeError(f"porter init wrote a recipe that does not validate:\n{exc}") from None
    site_counts = {"sites": len(scan.sites), **{a: scan.count(a) for a in ("rewrite", "keep", "decision")},
                   "matches": sum(counts.values()), "listed": len(findings)}
    return Draft(recipe_path, script_path, scan, site_counts, excludes, time.perf_counter() - t0, smoke_kind)


# -- pieces -----------------------------------------------------------------------------------
def _texts(files: dict[str, Path]) -> dict[str, str]:
    out = {}
    for rel, p in files.items():
        if rel.endswith(".py"):
            try:
                out[rel] = p.read_bytes().decode("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
    return out


def _top_modules(files: dict[str, Path]) -> set[str]:
    """Names `import X` would find at the package root (packages and modules)."""
    tops = set()
    for rel in files:
        parts = PurePosixPath(rel).parts
        if len(parts) == 1 and rel.endswith(".py"):
            tops.add(rel[:-3])
        elif len(parts) > 1:
            tops.add(parts[0])
    return tops


def _smoke_name(name: str, tops: set[str]) -> str:
    """A smoke script file name that cannot shadow the package (its folder goes on sys.path)."""
    stem = re.sub(r"\W", "_", name) + "_smoke"
    while stem in tops:
        stem += "_porter"
    return stem + ".py"


def _excluder(globs: list[str]) -> Callable[[str], bool]:
    from porter.rewrite import _glob

    pats = [_glob(g) for g in globs]
    return lambda p: any(r.match(p) for r in pats)


def _module_imports(texts: dict[str, str]) -> set[str]:
    """Top-level packages imported at module level, outside try/except (those may not load)."""
    wanted = LAZY_MODULES + GUARD_MODULES
    found: set[str] = set()
    for text in texts.values():
        if not any(m in text for m in wanted):
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found & set(wanted)


def _source_yaml(spec: Any, provenance: dict[str, Any], recipe_dir: Path) -> dict[str, Any]:
    kind = spec.kind
    if kind == "pypi":
        return {"pypi": spec.pypi, "sha256": provenance.get("sha256")}
    if kind == "path":
        rel = os.path.relpath(Path(spec.path).resolve(), recipe_dir.resolve())
        return {"path": Path(rel).as_posix()}
    if kind == "git":
        return {"git": spec.git, "rev": spec.rev}
    return {kind: getattr(spec, kind), "revision": spec.revision}


def _measure(name: str, source: dict[str, Any], steps: list[dict[str, Any]], where: Path
             ) -> tuple[dict[int, int], list[Any]]:
    """Run the steps on the source (nothing written but a temporary recipe): matches per step and
    the findings (decisions) each step reports, with the scan's."""
    from porter.port import build_port
    from porter.recipe import load_recipe

    data = {"porter": 1, "name": name, "source": source,
            "steps": [{k: v for k, v in s.items() if v not in ({}, [])} for s in steps]}
    tmp = where / f".{name}.porter-init.yaml"
    tmp.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
    try:
        build = build_port(load_recipe(tmp), {})
    finally:
        tmp.unlink(missing_ok=True)
    counts = {s["index"]: s["matched"] for s in build.report["steps"]}
    findings = [f for f in build.report["findings"] if f.get("step") or f["reason"].startswith("needs a decision")]
    return counts, findings


def _q(value: Any) -> str:
    """A YAML scalar or flow sequence (JSON is valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


def _plain(value: Any) -> str:
    """A string as a plain YAML scalar where that reads the same, else quoted."""
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_./][\w./:=@+-]*", value) and ": " not in value:
        return value
    return _q(value)


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()]


def _render(name: str, spec: Any, fetched: Any, source: dict[str, Any], steps: list[dict[str, Any]],
            counts: dict[int, int], findings: list[dict[str, Any]], scan: ScanResult, smoke: list[str]) -> str:
    from porter import __version__

    summary = _summary_of(fetched)
    label = Path(spec.path).name if spec.kind == "path" else spec.label
    desc = (f"{summary.rstrip('.')} ({label})" if summary else label) + ", ported to Ascend npu"
    excluded = _excluder([c.glob for c in scan.cuda_only])
    inside = sum(1 for s in scan.sites if excluded(s.file))
    out = [
        f"# Drafted by `porter init` {__version__}: a starting point for review, not a reviewed port.",
        f"# {len(scan.sites)} CUDA-specific sites ({scan.count('rewrite')} rewrite, {scan.count('keep')} keep,"
        f" {scan.count('decision')} decision" + (f"; {inside} in the parts excluded below" if inside else "")
        + f"): `porter scan {scan.source}` lists them.",
        "porter: 1",
        f"name: {name}",
        f"description: {_q(desc)}",
        "source:",
    ]
    out += [f"  {k}: {_plain(v)}" for k, v in source.items() if v is not None]
    out.append("")
    unowned = [f for f in findings if not f.get("step")]
    out.append("steps:")
    if unowned:
        out += _comment(f"Left for a decision, no step rewrites them ({len(unowned)}):", "  ")
        out += _listed(unowned, "  ")
    for i, step in enumerate(steps, start=1):
        out.append(f"  - use: {step['use']}")
        if step["with"]:
            out.append("    with:")
            out += [f"      {k}: {_q(v)}" for k, v in step["with"].items()]
        if step["exclude"] and i > 1:
            out.append("    exclude: *cuda_only")
        elif step["exclude"]:
            out.append("    exclude: &cuda_only  # CUDA-only by construction, proposed by `porter scan`")
            for c in scan.cuda_only:
                out += _comment(f"{c.kind}: " + "; ".join(c.evidence), "      ")
                out.append(f"      - {_q(c.glob)}")
        out.append(f"    expect: {counts.get(i, 0)}")
        out.append(f"    reason: {_q(step['reason'])}")
        mine = [f for f in findings if f.get("step") == i]
        if mine:
            out += _comment(f"Decisions and kept gates this step reports ({len(mine)}; lines in the patched file):", "    ")
            out += _listed(mine, "    ")
    out.append("")
    out += RUNTIME_HINT
    out.append("")
    out += smoke
    return "\n".join(out) + "\n"


def _listed(findings: list[dict[str, Any]], indent: str) -> list[str]:
    lines = []
    for f in findings[:MAX_LISTED]:
        code = f.get("code", "").replace("\n", " ")[:70]
        why = f["reason"] if len(f["reason"]) <= 110 else f["reason"][:107].rsplit(" ", 1)[0] + " ..."
        lines += _comment(f"- {f['file']}:{f['line']} [{f['category']}] {code} -- {why}", indent)
    if len(findings) > MAX_LISTED:
        lines += _comment(f"... and {len(findings) - MAX_LISTED} more (see report.md after `porter apply`)", indent)
    return lines


def _summary_of(fetched: Any) -> str:
    for info in sorted(Path(fetched.root).glob("*.dist-info")) + sorted(Path(fetched.root).glob("*.egg-info")):
        meta = info / ("METADATA" if info.suffix == ".dist-info" else "PKG-INFO")
        if meta.is_file():
            msg = email.parser.Parser().parsestr(meta.read_text(encoding="utf-8", errors="replace"))
            return (msg.get("Summary") or "").strip()
    return ""


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- the smoke section and script ----------------------------------------------------------------
_CONFIG_BASES = {"PretrainedConfig", "PreTrainedConfig"}
_MODEL_BASES = {"PreTrainedModel"}


def _classes(texts: dict[str, str]) -> dict[str, tuple[str, list[str], str | None]]:
    """Class name -> (module path, base names, config_class name) for every class in the package."""
    out: dict[str, tuple[str, list[str], str | None]] = {}
    for rel, text in sorted(texts.items()):
        if "class " not in text or ("Pretrained" not in text and "PreTrained" not in text):
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
                config = None
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and any(getattr(t, "id", "") == "config_class" for t in stmt.targets):
                        config = getattr(stmt.value, "id", None) or getattr(stmt.value, "attr", None)
                out.setdefault(node.name, (rel, bases, config))
    return out


def _derives(name: str, classes: dict[str, tuple[str, list[str], str | None]], roots: set[str]) -> bool:
    seen = set()
    stack = [name]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in roots:
            return True
        stack.extend(classes.get(n, ("", [], None))[1])
    return False


def _config_of(name: str, classes: dict[str, tuple[str, list[str], str | None]]) -> str | None:
    stack = [name]
    while stack:
        n = stack.pop()
        info = classes.get(n)
        if info is None:
            continue
        if info[2]:
            return info[2]
        stack.extend(info[1])
    return None


def _module_name(rel: str) -> str:
    mod = rel[:-3].replace("/", ".")
    return mod.removesuffix(".__init__")


def _pick_model(texts: dict[str, str]) -> tuple[str, str, str, str] | None:
    """(model module, model class, config module, config class), or None."""
    classes = _classes(texts)
    models = [n for n in classes if _derives(n, classes, _MODEL_BASES) and n not in _MODEL_BASES
              and not n.endswith("PreTrainedModel")]
    rank = lambda n: (0 if n.endswith("ForCausalLM") else 1 if "ForConditionalGeneration" in n else
                      2 if n.endswith("Model") else 3, n)
    for model in sorted(models, key=rank):
        config = _config_of(model, classes)
        if config and config in classes and _derives(config, classes, _CONFIG_BASES):
            return _module_name(classes[model][0]), model, _module_name(classes[config][0]), config
    return None


def _requires(fetched: Any, texts: dict[str, str]) -> tuple[list[str], list[str]]:
    """(guessed smoke requirements, all of Requires-Dist): the distributions the package declares
    (no extras, not the host's torch family) whose import name its code imports."""
    dist = getattr(fetched, "dist", None)
    declared = list(getattr(dist, "requires", ()) or ())
    imported: set[str] = set()
    for text in texts.values():
        imported.update(m.group(1).lower() for m in re.finditer(r"^\s*(?:from|import)\s+(\w+)", text, re.M))
    out = []
    for req in declared:
        if ";" in req:
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if not m:
            continue
        dist_name = m.group(1).lower()
        if dist_name in HOST_PACKAGES or dist_name.replace("-", "_").replace(".", "_") not in imported:
            continue
        out.append(req.replace(" ", ""))
    return out, declared


def _smoke(name: str, script_name: str, tree: Any, texts: dict[str, str], fetched: Any
           ) -> tuple[list[str], str, str]:
    requires, declared = _requires(fetched, texts)
    picked = _pick_model(texts)
    lines = ["smoke:", f"  script: smoke/{script_name}"]
    if declared:
        lines += _comment("guessed from Requires-Dist (the distributions the code imports; torch comes from the"
                          " host); all of it: " + ", ".join(declared)[:400], "  ")
    lines.append(f"  requires: {_q(requires)}")
    lines.append("  seed: 0")
    lines.append("  dtype: float32")
    if picked:
        model_mod, model_cls, config_mod, config_cls = picked
        lines += _comment("forward only: generate() needs the package's codec to turn tokens into audio (TODO"
                          " in the script); add it to run: once it returns audio", "  ")
        lines.append('  run: ["forward"]')
        lines.append("  inputs: {prompt_len: 8}")
        lines.append("  thresholds: {mean_rel_diff_max: 0.01, cosine_min: 0.9999}")
        script = _TRANSFORMERS_SCRIPT.format(name=name, model_mod=model_mod, model_cls=model_cls,
                                             config_mod=config_mod, config_cls=config_cls)
        kind = f"tiny {model_cls} from a shrunk {config_cls}"
    else:
        lines += _comment("the script is a skeleton: its TODOs raise until you write build/forward", "  ")
        lines.append('  run: ["forward"]')
        top = sorted(_top_modules(tree.files) - {"setup", "tests", "test"})
        script = _SKELETON_SCRIPT.format(name=name, package=top[0] if top else "PACKAGE")
        kind = "skeleton with TODOs that fail loudly"
    return lines, script, kind


_TRANSFORMERS_SCRIPT = '''"""Smoke script drafted by `porter init` for recipes/{name}.yaml: a tiny random-initialised
{model_cls} built from {config_cls} with every size shrunk (layers, hidden sizes, heads,
intermediate sizes, vocabulary), run through the patched package. Review it: the shrinking is
generic, and generate() needs the model's codec.

porter calls build(ctx) once on the CPU, forward(model, ctx) on the CPU float32 reference and on
the target device (same weights, same inputs), and compares every returned tensor.
"""

import re

import torch

from {config_mod} import {config_cls}
from {model_mod} import {model_cls}

SMALL = [  # (attribute name pattern, value): the first match wins
    (r"head_dim$", 16),
    (r"(^|_)(num_key_value_heads|n_kv_heads|num_kv_heads)$", 1),
    (r"(^|_)(num_attention_heads|num_heads|n_head|n_heads|attention_heads)$", 2),
    (r"(^|_)(intermediate_size|ffn_dim|n_inner|ffn_hidden_size|intermediate_dim|mlp_dim)$", 64),
    (r"(^|_)(num_hidden_layers|num_layers|n_layer|n_layers|layers)$", 2),
    (r"(^|_)(hidden_size|d_model|n_embd|embed_dim|hidden_dim|dim)$", 32),
    (r"(^|_)vocab_size$", 128),
]


def shrink(values):
    """A config's to_dict() with every size made small; nested configs too."""
    out = {{}}
    for key, value in values.items():
        if isinstance(value, dict):
            out[key] = shrink(value)
            continue
        out[key] = value
        if isinstance(value, int) and not isinstance(value, bool):
            for pattern, small in SMALL:
                if re.search(pattern, key):
                    out[key] = min(value, small) if value > 0 else value
                    break
    layers = out.get("num_hidden_layers")
    if isinstance(out.get("layer_types"), list) and isinstance(layers, int):
        out["layer_types"] = out["layer_types"][:layers]
    return out


def tiny_config():
    values = shrink({config_cls}().to_dict())
    for key in ("transformers_version", "architectures", "_name_or_path"):
        values.pop(key, None)
    return {config_cls}(**values)


def build(ctx):
    return {model_cls}(tiny_config()).eval()


def forward(model, ctx):
    vocab = getattr(model.config, "vocab_size", 128) or 128
    ids = ctx.randint(0, vocab, (1, ctx.inputs.get("prompt_len", 8)))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    logits = getattr(out, "logits", None)
    if logits is None:  # a base model: its hidden states
        logits = out[0]
    return {{"logits": logits}}


def generate(model, ctx):
    vocab = getattr(model.config, "vocab_size", 128) or 128
    ids = ctx.randint(0, vocab, (1, ctx.inputs.get("prompt_len", 8)))
    new = ctx.inputs.get("max_new_tokens", 8)
    seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                         min_new_tokens=new, do_sample=False)
    tokens = seq[0, ids.shape[1]:]
    raise NotImplementedError(
        f"TODO ({{__file__}}): decode the {{tokens.numel()}} generated tokens to audio with the package's"
        " codec and return ctx.Audio(waveform, sample_rate, n_tokens=...)"
    )
'''

_SKELETON_SCRIPT = '''"""Smoke script skeleton drafted by `porter init` for recipes/{name}.yaml.

porter found no transformers PretrainedConfig/PreTrainedModel subclass it can build tiny, so the
TODOs below are yours: build a tiny random-initialised model from a real config (no weight
downloads), return named tensors from forward, audio from generate. Until then the smoke fails
loudly, naming this file.

porter calls build(ctx) once on the CPU, forward(model, ctx) on the CPU float32 reference and on
the target device (same weights, same inputs made with ctx.randn/ctx.randint), and generate(model,
ctx) on the target; see the README's smoke script contract.
"""

import {package}  # noqa: F401  (the patched package)


def build(ctx):
    raise NotImplementedError(f"TODO ({{__file__}}): build a tiny {package} model from a real config")


def forward(model, ctx):
    raise NotImplementedError(f"TODO ({{__file__}}): run the model, return {{{{name: tensor}}}} to compare")


def generate(model, ctx):
    raise NotImplementedError(f"TODO ({{__file__}}): return ctx.Audio(waveform, sample_rate)")
'''

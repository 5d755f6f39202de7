"""Assemble report.json: every change, every step's matches, skipped files, provenance."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Any

from porter import __version__
from porter.recipe import LoadedRecipe
from porter.rewrite import RewriteResult
from porter.source import SourceTree, sha256_file

SCHEMA = 1


def _change(c: Any) -> dict[str, Any]:
    d = asdict(c)
    d["safety"] = c.safety.value
    return d


def build_report(
    loaded: LoadedRecipe,
    tree: SourceTree,
    result: RewriteResult,
    generated: dict[str, str],
    extra: dict[str, Any] | None = None,
    scan_findings: list[Any] | None = None,
) -> dict[str, Any]:
    recipe = loaded.recipe
    inputs = {rel: sha256_file(p) for rel, p in sorted(tree.files.items())}
    manifest = hashlib.sha256("".join(f"{h}  {p}\n" for p, h in inputs.items()).encode()).hexdigest()
    steps = []
    for i, (step, transform) in enumerate(zip(recipe.steps, loaded.transforms), start=1):
        matched = result.matched(i)
        steps.append({
            "index": i,
            "use": step.use,
            "with": transform.params.model_dump(mode="json"),
            "files": list(step.files or transform.default_files),
            "exclude": list(step.exclude),
            **({"exclude_symbols": list(step.exclude_symbols)} if step.exclude_symbols else {}),
            "expect": step.expect,
            "matched": matched,
            "findings": sum(1 for f in result.findings if f.step == i),
            "drift": step.expect is not None and step.expect != matched,
            "safety": transform.safety.value,
            "reason": step.reason,
        })
    changes = sorted(result.changes, key=lambda c: (c.file, c.line, c.step or 0))
    findings = sorted([*result.findings, *(scan_findings or [])], key=lambda f: (f.file, f.line, f.step or 0))
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "porter_version": __version__,
        "recipe": {
            "name": recipe.name,
            "path": loaded.path.as_posix(),
            "sha256": loaded.sha256,
            "description": recipe.description,
        },
        "sources": [{"into": s.spec.into, **s.provenance} for s in tree.sources],
        "inputs": {"files": len(inputs), "manifest_sha256": manifest, "sha256": inputs},
        "steps": steps,
        "changes": [_change(c) for c in changes],
        "findings": [asdict(f) for f in findings],
        "files": {
            "changed": [f.path for f in result.by_status("changed")],
            "unchanged": len(result.by_status("unchanged")),
            "skipped": [{"path": f.path, "reason": f.reason} for f in result.by_status("skipped")]
            + [{"path": p, "reason": r} for p, r in tree.skipped],
            "failed": [{"path": f.path, "reason": f.reason} for f in result.by_status("failed")],
        },
        "generated": sorted(generated),
    }
    report.update(extra or {})
    return report

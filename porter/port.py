"""`porter apply` and `porter diff` as library functions: recipe -> source -> rewrite -> package."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from porter import emit, runtime
from porter.errors import PortProblem, UsageError
from porter.recipe import LoadedRecipe, load_recipe
from porter.report import build_report, render_markdown
from porter.rewrite import RewriteResult, StepPlan, rewrite_tree
from porter.scan import scan_tree
from porter.source import SourceTree, fetch_tree

DEFAULT_OUT = Path("patched_models")


@dataclass
class PortBuild:
    loaded: LoadedRecipe
    tree: SourceTree
    result: RewriteResult
    emitted: emit.Emitted
    report: dict[str, Any]

    @property
    def drift(self) -> list[dict[str, Any]]:
        return [s for s in self.report["steps"] if s["drift"]]


@dataclass
class ApplyOutcome:
    target: Path
    build: PortBuild | None
    exit_code: int = 0
    messages: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    smoke: Any = None


def parse_overrides(values: tuple[str, ...] | list[str]) -> dict[str | None, Path]:
    """`--source DIR` (the first source) or `--source ID=DIR`."""
    out: dict[str | None, Path] = {}
    for v in values:
        key, _, path = v.rpartition("=") if "=" in v and not Path(v).exists() else ("", "", v)
        out[key or None] = Path(path).expanduser().resolve()
    return out


def plan(loaded: LoadedRecipe) -> tuple[StepPlan, ...]:
    return tuple(
        StepPlan(index=i, transform=t, files=step.files or t.default_files, exclude=step.exclude)
        for i, (step, t) in enumerate(zip(loaded.recipe.steps, loaded.transforms), start=1)
    )


def build_port(loaded: LoadedRecipe, overrides: dict[str | None, Path], jobs: int | None = None) -> PortBuild:
    unknown = [k for k in overrides if k is not None and k not in {s.id for s in loaded.recipe.sources}]
    if unknown:
        ids = ", ".join(s.id for s in loaded.recipe.sources if s.id) or "(the recipe's sources have no id)"
        raise UsageError(f"--source {unknown[0]}=...: the recipe has no source with that id (ids: {ids})")
    tree = fetch_tree(loaded.recipe.sources, loaded.path.parent, overrides)
    steps = plan(loaded)
    result = rewrite_tree(tree.files, steps, jobs=jobs, helper_modules=runtime.helper_modules(tree))
    result, written = runtime.finish(loaded, tree, result)
    emitted = emit.build(loaded, tree, result, written.generated)
    extra: dict[str, Any] = {"runtime": written.runtime}
    if loaded.recipe.weights is not None:
        extra["weights"] = _dump(loaded.recipe.weights)
    report = build_report(loaded, tree, result, emitted.generated, extra, _scan(loaded, tree, result, steps))
    return PortBuild(loaded, tree, result, emitted, report)


def _scan(loaded: LoadedRecipe, tree: SourceTree, result: RewriteResult, steps: tuple[StepPlan, ...]) -> list:
    """CUDA-specific sites left in the patched tree (files the recipe's scan: globs select)."""
    spec = loaded.recipe.scan
    selector = StepPlan(index=0, transform=loaded.transforms[0] if loaded.transforms else None,  # type: ignore[arg-type]
                        files=spec.files, exclude=spec.exclude)
    patched = {f.path: f.text for f in result.files if f.status == "changed"}
    unreadable = {f.path for f in result.files if f.status in ("skipped", "failed")}

    def texts():
        for path in sorted(tree.files):
            if not path.endswith(".py") or path in unreadable or not selector.wants(path):
                continue
            text = patched.get(path)
            if text is None:
                try:
                    text = tree.files[path].read_bytes().decode("utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
            yield path, text

    return scan_tree(
        texts(),
        transforms_for=lambda p: {s.transform.name for s in steps if s.wants(p)},
        already={(f.file, f.line) for f in result.findings},
    )


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True) if hasattr(model, "model_dump") else model


def _problems(build: PortBuild) -> list[str]:
    out = []
    for s in build.drift:
        out.append(
            f"upstream drift: step {s['index']} ({s['use']}) expected {s['expect']} matches and found"
            f" {s['matched']} on {', '.join(x['kind'] + ' ' + str(x.get('requirement') or x.get('path') or x.get('url') or x.get('repo')) for x in build.report['sources'])};"
            " update the recipe for the new upstream (run `porter diff` to see what the steps do now)"
        )
    for f in build.result.by_status("failed"):
        out.append(f"{f.path}: {f.reason}")
    return out


def reports(build: PortBuild, smoke: Any = None, target: Path | None = None) -> dict[str, str]:
    report = dict(build.report)
    sections = []
    if smoke is not None:
        report["smoke"] = smoke.to_json()
        sections.append("## Smoke inference\n\n" + smoke.to_markdown(relative_to=target))
    else:
        report["smoke"] = None
    return {
        "report.json": json.dumps(report, indent=2, sort_keys=False) + "\n",
        "report.md": render_markdown(report, sections),
    }


def apply(
    recipe_path: str | Path,
    *,
    overrides: dict[str | None, Path] | None = None,
    out: Path | None = None,
    smoke: bool = True,
    check: bool = False,
    device: str | None = None,
    jobs: int | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> ApplyOutcome:
    loaded = load_recipe(recipe_path)
    target = (out or DEFAULT_OUT) / loaded.recipe.name
    overrides = overrides or {}
    for note in loaded.notes:
        progress(f"note: {note}")

    def shown(i: int, s: Any) -> str:
        local = overrides.get(s.id) if s.id in overrides else (overrides.get(None) if i == 0 else None)
        return f"{local} (instead of {s.label})" if local else s.label

    progress(f"source: {', '.join(shown(i, s) for i, s in enumerate(loaded.recipe.sources))}")
    build = build_port(loaded, overrides or {}, jobs=jobs)
    outcome = ApplyOutcome(target=target, build=build)
    problems = _problems(build)
    if problems:
        outcome.exit_code = 1
        outcome.messages = problems + [f"nothing was written to {target}"]
        return outcome
    if check:
        outcome.stale = _stale(target, build)
        outcome.exit_code = 1 if outcome.stale else 0
        return outcome
    progress(f"writing {target}")
    emit.write(target, build.emitted, reports(build))
    if smoke and loaded.recipe.smoke is not None:
        progress("running smoke inference")
        outcome.smoke = _run_smoke(loaded, target, device)
        _rewrite_reports(target, reports(build, outcome.smoke, target.resolve()))
        if not outcome.smoke.passed:
            outcome.exit_code = 1
            failures = [f.message for f in outcome.smoke.failures]
            error = getattr(outcome.smoke, "error", None)
            if error is not None and not any(error.message in f for f in failures):
                failures.append(error.message)
            outcome.messages.append("smoke test failed: " + ("; ".join(failures) or f"see {target}/report.md"))
    return outcome


def _run_smoke(loaded: LoadedRecipe, target: Path, device: str | None) -> Any:
    from porter.smoke import run_smoke

    return run_smoke(
        loaded.recipe.smoke,
        recipe_dir=loaded.path.parent.resolve(),
        package_root=target.resolve(),
        device=device or loaded.recipe.device,
        out_dir=(target / emit.SMOKE_DIR).resolve(),
    )


def _rewrite_reports(target: Path, texts: dict[str, str]) -> None:
    for name, text in texts.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, target / name)


def _stale(target: Path, build: PortBuild) -> list[str]:
    texts = reports(build)
    stale = emit.stale(target, build.emitted, texts)
    current = target / "report.json"
    if current.is_file():
        try:
            have = json.loads(current.read_text(encoding="utf-8"))
        except ValueError:
            have = {}
        have.pop("smoke", None)
        want = json.loads(texts["report.json"])
        want.pop("smoke", None)
        if have != want:
            stale.append("report.json")
    return stale


def diff(recipe_path: str | Path, overrides: dict[str | None, Path] | None = None) -> tuple[str, PortBuild]:
    loaded = load_recipe(recipe_path)
    build = build_port(loaded, overrides or {})
    problems = _problems(build)
    if problems and not build.drift:
        raise PortProblem("\n".join(problems))
    return build.emitted.diff, build

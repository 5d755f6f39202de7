"""`porter apply` and `porter diff` as library functions: recipe -> source -> rewrite -> package."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from porter import emit, runtime
from porter.errors import PortProblem, UsageError
from porter.progress import FileProgress
from porter.recipe import LoadedRecipe, load_recipe
from porter.report import build_report, render_markdown
from porter.rewrite import MAX_FILE_BYTES, RewriteResult, StepPlan, nesting_problem, rewrite_tree
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
        StepPlan(index=i, transform=t, files=step.files or t.default_files, exclude=step.exclude,
                 exclude_symbols=step.exclude_symbols)
        for i, (step, t) in enumerate(zip(loaded.recipe.steps, loaded.transforms), start=1)
    )


def build_port(loaded: LoadedRecipe, overrides: dict[str | None, Path], jobs: int | None = None) -> PortBuild:
    unknown = [k for k in overrides if k is not None and k not in {s.id for s in loaded.recipe.sources}]
    if unknown:
        ids = ", ".join(s.id for s in loaded.recipe.sources if s.id) or "(the recipe's sources have no id)"
        raise UsageError(f"--source {unknown[0]}=...: the recipe has no source with that id (ids: {ids})")
    tree = fetch_tree(loaded.recipe.sources, loaded.path.parent, overrides)
    steps = plan(loaded)
    with FileProgress("rewrite") as bar:  # shown on a terminal once the rewrite passes 2 s
        result = rewrite_tree(tree.files, steps, jobs=jobs, progress=bar, helper_modules=runtime.helper_modules(tree))
    result, written = runtime.finish(loaded, tree, result)
    emitted = emit.build(loaded, tree, result, written.generated)
    extra: dict[str, Any] = {"runtime": written.runtime}
    if loaded.recipe.weights is not None:
        extra["weights"] = _dump(loaded.recipe.weights)
    dist = emit.dist_for(tree)
    if dist is not None:  # recorded, so applying the recipe to this output regenerates the same packaging
        extra["package"] = {"name": dist.name, "version": dist.version, "requires_python": dist.requires_python,
                            "requires": list(dist.requires), "entry_points": dist.entry_points}
    report = build_report(loaded, tree, result, emitted.generated, extra, _scan(loaded, tree, result, steps))
    _count_earlier_matches(report, tree)
    return PortBuild(loaded, tree, result, emitted, report)


def _count_earlier_matches(report: dict[str, Any], tree: SourceTree) -> None:
    """Applying a recipe to its own output: its steps find nothing left to do, and the matches the
    earlier run made (recorded in the output's report.json) count towards `expect:`, so a fixpoint
    is not reported as upstream drift. `expect:` may also give this tree's own count (0)."""
    earlier: dict[tuple[Any, Any], int] = {}
    for s in tree.sources:
        for step in (emit.earlier_report(s.root) or {}).get("steps") or []:
            if isinstance(step, dict) and isinstance(step.get("matched"), int):
                key = (step.get("index"), step.get("use"))
                earlier[key] = earlier.get(key, 0) + step["matched"] + int(step.get("matched_earlier") or 0)
    for step in report["steps"]:
        before = earlier.get((step["index"], step["use"]))
        if before is None:
            continue
        step["matched_earlier"] = before
        if step["expect"] is not None:
            step["drift"] = step["expect"] not in (step["matched"], step["matched"] + before)


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
                if len(text) > MAX_FILE_BYTES or nesting_problem(text) is not None:
                    continue  # beyond the rewrite's limits: `ast` would recurse as deep (RecursionError)
            yield path, text

    return _with_deep_stack(lambda: scan_tree(
        texts(),
        transforms_for=lambda p: {s.transform.name for s in steps if s.wants(p)},
        already={(f.file, f.line) for f in result.findings},
        original_of=lambda p: _original(tree, p) if p in patched else None,
    ))


def _with_deep_stack(fn: Callable[[], Any]) -> Any:
    """Run `fn` in a thread with a large stack and recursion limit: `ast` walks deep but legal code
    (100 nested blocks, chains up to the rewrite's limit) recursively."""
    box: list[Any] = []
    limit, size = sys.getrecursionlimit(), threading.stack_size()

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box.append((False, exc))

    sys.setrecursionlimit(max(limit, 30_000))
    try:
        threading.stack_size(512 * 2**20)
        t = threading.Thread(target=run)
        t.start()
    finally:
        threading.stack_size(size)
    t.join()
    sys.setrecursionlimit(limit)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _original(tree: SourceTree, path: str) -> str | None:
    try:
        return tree.files[path].read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True) if hasattr(model, "model_dump") else model


def _problems(build: PortBuild, target: Path | None = None) -> list[str]:
    out = []
    where = ', '.join(x['kind'] + ' ' + str(x.get('requirement') or x.get('path') or x.get('url') or x.get('repo'))
                      for x in build.report['sources'])
    # "upstream drift" only when the counts were confirmed by a clean apply to `target` and the
    # source has changed since; otherwise the recipe's counts were never confirmed on this source.
    previous = _clean_report(target)
    manifest = build.report["inputs"]["manifest_sha256"]
    drifted = previous is not None and previous.get("inputs", {}).get("manifest_sha256") != manifest
    for s in build.drift:
        head = f"step {s['index']} ({s['use']}) expected {s['expect']} matches and found {s['matched']} on {where}"
        if drifted:
            out.append(f"upstream drift: {head}; the source changed since the last clean apply to {target}:"
                       " update the recipe for the new upstream (run `porter diff` to see what the steps do now)")
        else:
            why = (f"this recipe has not applied cleanly to {target} before, so its counts were never confirmed"
                   if previous is None else f"the source is the one of the last clean apply to {target}, so the"
                   " recipe's steps (or porter) changed")
            out.append(f"expect mismatch: {head}; {why}. Review `porter diff`, then `porter expect RECIPE`"
                       " (or `porter apply --update-expect`) takes the counts from this source")
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
    roots = [f.root for f in build.tree.sources]
    if not check:
        emit.check_target(target, out or DEFAULT_OUT, roots, loaded.path)
    problems = _problems(build, target)
    if problems:
        outcome.exit_code = 1
        outcome.messages = problems + [f"nothing was written to {target}"]
        if not check:  # what was found, beside the target; the package itself is not replaced
            rejected = _write_rejected(target, build, problems)
            outcome.messages[-1] += f"; what this run found is in {rejected / 'report.md'}"
        return outcome
    if check:
        emit.check_links(target, out or DEFAULT_OUT)
        outcome.stale = _stale(target, build)
        outcome.exit_code = 1 if outcome.stale else 0
        return outcome
    # One writer per target at a time: the swap, the smoke run inside the package and the report
    # rewrite after it all happen under the lock; what a killed writer left is recovered first.
    with emit.locked(target, wait=progress):
        for line in emit.recover(target):
            progress(line)
        emit.check_target(target, out or DEFAULT_OUT, roots, loaded.path)
        progress(f"writing {target}")
        emit.write(target, build.emitted, reports(build))
        _remove_rejected(target)
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


def _clean_report(target: Path | None) -> dict[str, Any] | None:
    """report.json of the last apply that wrote `target` (only a clean apply writes it)."""
    path = None if target is None else target / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else None
    except (ValueError, OSError):
        return None
    return data if isinstance(data, dict) and "porter_version" in data else None


def rejected_dir(target: Path) -> Path:
    return target.with_name(target.name + ".rejected")


def _write_rejected(target: Path, build: PortBuild, problems: list[str]) -> Path:
    """report.md, report.json and port.diff of a run that was refused, in <target>.rejected/."""
    dest = rejected_dir(target)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    texts = {**reports(build), "port.diff": build.emitted.diff}
    head, _, rest = texts["report.md"].partition("\n")
    refused = "".join(f"> {p}\n" for p in problems)
    texts["report.md"] = f"{head}\n\n**Refused: {target} was not written.**\n\n{refused}{rest}"
    for name, text in texts.items():
        (tmp / name).write_text(text, encoding="utf-8", newline="\n")
    _remove_rejected(target)
    os.rename(tmp, dest)
    return dest


def _remove_rejected(target: Path) -> None:
    dest = rejected_dir(target)
    if dest.is_symlink():  # only the link is ours to remove, never what it points to
        dest.unlink()
    elif dest.is_dir():
        import shutil

        shutil.rmtree(dest)


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

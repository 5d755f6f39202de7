"""After the steps: every CUDA-specific site still in the patched tree, and why it was left.

The scan does not detect anything itself: it reads `porter.analysis` (the one model of a site that
the transforms read too), so the scan and the transforms never disagree. Each site still present
becomes a finding with the file, the line, a category, why it was left (outside the recipe's files,
no step for it, kept CUDA-only as a gate, harmless where it is, or a decision with the analysis's
reason), the transform that owns it and whether porter changed that line.
"""

from __future__ import annotations

import difflib
from typing import Callable, Iterable

from porter.analysis import PREFILTER, Site, analyse_source  # noqa: F401  (PREFILTER: re-exported)
from porter.transforms import Finding

def scan_source(text: str, path: str = "") -> list[Site]:
    """The analysis's sites in `text`, without the code porter wrote (its helpers, the branch it keeps)."""
    return [s for s in analyse_source(path, text) if not s.ported]


def classify(site: Site, used: set[str], changed: bool = False) -> str:
    """Why a site is still in the patched tree, naming its owner and whether its line changed."""
    owner = site.transform or "no transform"
    tail = f" [owner: {owner}; line {'changed' if changed else 'unchanged'}]"
    if not used:
        return "outside the recipe's files" + tail
    if site.action == "keep":
        reason = site.reason if site.reason.startswith("harmless") else f"harmless: kept CUDA-only, {site.reason}"
        return reason + (f" (gate: {site.context})" if site.context and "gate" in site.category else "") + tail
    if site.action == "decision":
        return f"needs a decision: {site.reason}" + tail
    if site.transform and site.transform in used:
        return f"needs a decision: {site.transform} left it unchanged ({site.reason})" + tail
    see = f" (see {site.transform})" if site.transform else ""
    return f"needs a decision: no step for this file handles {site.category}{see}" + tail


def changed_lines(original: str | None, patched: str) -> set[int]:
    """1-based lines of `patched` that differ from `original` (inserted or replaced)."""
    if original is None or original == patched:
        return set()
    a, b = original.splitlines(), patched.splitlines()
    out: set[int] = set()
    for tag, _, _, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag in ("replace", "insert"):
            out.update(range(j1 + 1, j2 + 1))
    return out


def scan_tree(
    texts: Iterable[tuple[str, str]],
    transforms_for: Callable[[str], set[str]],
    already: set[tuple[str, int]],
    original_of: Callable[[str], str | None] | None = None,
) -> list[Finding]:
    """Findings for every CUDA-specific site left in (path, text) pairs of the patched tree.

    `transforms_for(path)` names the transforms of the steps whose files: include `path`;
    `original_of(path)` the upstream text, to say whether porter changed a finding's line.
    """
    out: list[Finding] = []
    for path, text in texts:
        sites = scan_source(text, path)
        if not sites:
            continue
        changed = changed_lines(original_of(path), text) if original_of is not None else set()
        used = transforms_for(path)
        seen: set[tuple[int, str]] = set()
        for site in sites:
            category = site.category  # the analysis's vocabulary, as `porter scan` and SARIF use it
            if (path, site.line) in already or (site.line, category) in seen:
                continue  # a transform already reported this site with its own reason
            seen.add((site.line, category))
            out.append(Finding(file=path, line=site.line, category=category,
                               reason=classify(site, used, site.line in changed),
                               code=site.code, transform="scan"))
    return out

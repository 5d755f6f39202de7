"""Render report.json's model as Markdown for reviewers (report.md)."""

from __future__ import annotations

from typing import Any


def cell(value: Any, limit: int = 160) -> str:
    text = str(value if value is not None else "")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("\n", "⏎ ")


def code(value: str, limit: int = 160) -> str:
    text = cell(value, limit)
    return f"`{text}`" if text and "`" not in text else text


def table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(c, 10_000) if isinstance(c, str) else cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(report: dict[str, Any], sections: list[str] | None = None) -> str:
    r = report
    files = r["files"]
    drift = [s for s in r["steps"] if s["drift"]]
    from porter.report.review import pr_summary, runtime_section

    lines = [
        f"# porter report: {r['recipe']['name']}",
        "",
        pr_summary(r).rstrip(),
        "",
        r["recipe"]["description"] or "",
        "",
        "## Summary",
        "",
        f"- changes: {len(r['changes'])} in {len(files['changed'])} files"
        f" ({files['unchanged']} files unchanged, {len(files['skipped'])} skipped, {len(files['failed'])} failed)",
        f"- findings left for review: {len(r['findings'])}",
        f"- expect: counts that differ: {', '.join('step ' + str(s['index']) for s in drift) or 'none'}",
        "",
        "## Provenance",
        "",
        table(["source", "into", "identity"], [
            [s["kind"], s["into"], ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("kind", "into"))]
            for s in r["sources"]
        ]),
        "",
        f"- recipe: `{r['recipe']['path']}` sha256 `{r['recipe']['sha256']}`",
        f"- inputs: {r['inputs']['files']} files, manifest sha256 `{r['inputs']['manifest_sha256']}`"
        " (every file's sha256 is in report.json)",
        f"- porter {r['porter_version']}",
        "",
        "## Steps",
        "",
        table(["#", "transform", "files", "expect", "matched", "findings", "safety", "reason"], [
            [s["index"], s["use"], ", ".join(s["files"]), "" if s["expect"] is None else s["expect"],
             f"{s['matched']}" + (" **DRIFT**" if s["drift"] else ""), s["findings"], s["safety"], s["reason"]]
            for s in r["steps"]
        ]),
        "",
        "## Changes",
        "",
    ]
    if r["changes"]:
        lines.append(table(["file:line", "step", "transform", "before", "after", "safety", "why"], [
            [f"{c['file']}:{c['line']}", c["step"], c["transform"], code(c["before"]), code(c["after"]),
             c["safety"], c["reason"]]
            for c in r["changes"]
        ]))
    else:
        lines.append("No changes.")
    lines += ["", runtime_section(r)]
    lines += ["", "## Findings (left for review)", ""]
    if r["findings"]:
        lines.append(table(["file:line", "category", "code", "why it was left"], [
            [f"{f['file']}:{f['line']}", f["category"], code(f["code"]), f["reason"]] for f in r["findings"]
        ]))
    else:
        lines.append("None.")
    if files["skipped"] or files["failed"]:
        lines += ["", "## Files skipped or failed", ""]
        lines.append(table(["file", "status", "reason"],
                           [[f["path"], "skipped", f["reason"]] for f in files["skipped"]]
                           + [[f["path"], "failed", f["reason"]] for f in files["failed"]]))
    for section in sections or []:
        lines += ["", section.rstrip()]
    return "\n".join(lines).rstrip() + "\n"

"""`porter remap SRC DST --rules rules.yaml [--verify] [--json]`: a thin click command.

Data (the mapping table as Markdown, or everything as JSON with --json) goes to stdout; the summary
and errors go to stderr. Exit codes: 0 done, 1 --verify found differing bytes, 2 bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from porter.weights.errors import WeightsError
from porter.weights.apply import RemapResult, remap_checkpoint
from porter.weights.rules import load_rules


@click.command("remap")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--rules", "rules_path", required=True, type=click.Path(path_type=Path),
              help="YAML list of rules (or a mapping with `rules:` and `verify:`).")
@click.option("--verify", is_flag=True, default=None,
              help="Re-read the output and check every tensor's sha256 against the source.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (mapping table, counts) as JSON.")
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@click.option("--dry-run", is_flag=True, help="Check the rules and print the mapping; write nothing.")
@click.pass_context
def remap(
    ctx: click.Context, src: Path, dst: Path, rules_path: Path, verify: bool | None, as_json: bool,
    force: bool, dry_run: bool,
) -> None:
    """Rename, drop and merge the tensors of a safetensors checkpoint (file or shard directory).

    Only headers are rewritten; tensor bytes are copied by range, so memory stays small and the
    speed is close to a file copy. Nothing is written unless every rule and file checks out.
    """
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        spec = load_rules(rules_path)
        result = remap_checkpoint(src, dst, spec, verify=verify or None, overwrite=force, dry_run=dry_run)
    except WeightsError as e:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(e), "exit_code": e.exit_code}, indent=2))
        err.print(f"porter remap: error: {e}", markup=False, style="red")
        # SystemExit, not ctx.exit: `porter.cli.main` runs click with standalone_mode=False, where
        # click turns ctx.exit(code) into a return value that main() never saw (bad input exited 0).
        raise SystemExit(e.exit_code)
    if as_json:
        click.echo(json.dumps({"ok": True, **result.to_dict()}, indent=2))
    else:
        click.echo(result.markdown(changed_only=True), nl=False)
    err.print(summary(result), markup=False)


def summary(result: RemapResult) -> str:
    """One paragraph for the terminal: counts, bytes, speed, verification, drift warnings."""
    c = result.counts()
    gb = result.bytes_out / 1e9
    verb = "would write" if result.dry_run else "wrote"
    lines = [
        f"{result.src} -> {result.dst}: {verb} {c['tensors_out']} tensors in {len(result.shards)} "
        f"file(s) ({c['renamed']} renamed, {c['dropped']} dropped, {c['merged']} merged into {c['merge_targets']}, "
        f"{c['kept']} unchanged)"
    ]
    if not result.dry_run:
        speed = f", {gb / result.seconds:.2f} GB/s" if result.seconds > 0 and gb > 0.01 else ""
        lines.append(
            f"{gb:.3f} GB of tensor data in {result.seconds:.2f} s{speed} via {result.copy_method} (cpu)"
            + ("; verified: every tensor's sha256 matches the source" if result.verified else "")
        )
    lines += [f"warning: {r} matched no key" for r in result.unmatched_rules]
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)

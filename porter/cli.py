"""The `porter` command: thin click commands over the library.

Data (diffs, JSON) goes to stdout; progress and summaries to stderr. Exit codes: 0 success,
1 the port has a problem (drift, stale patch, failed smoke check), 2 a usage error, 3 an internal
error, 130 interrupted (see porter/__main__.py, the installed entry point).
"""

from __future__ import annotations

import json
import sys
import textwrap
import traceback
from pathlib import Path

import click
from rich.console import Console

from porter import __version__
from porter.errors import PorterError

err = Console(stderr=True, highlight=False, soft_wrap=True)


class _Group(click.Group):
    """Commands whose modules are built separately (weights remapping, the NPU kernel list) are
    imported only when named or listed: `porter apply` does not pay for importing them."""

    LAZY = {"remap": ("porter.weights", "remap"), "npu-kernels": ("porter.npu.kernels", "npu_kernels")}

    def _lazy(self, name: str) -> click.Command | None:
        module, attr = self.LAZY[name]
        try:
            cmd = getattr(__import__(module, fromlist=[attr]), attr, None)
        except ImportError:
            return None
        if isinstance(cmd, click.Command):
            self.add_command(cmd, name)
            return cmd
        return None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            self._lazy(cmd_name)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for name in self.LAZY:
            if name not in self.commands:
                self._lazy(name)
        return super().list_commands(ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="porter")
def cli() -> None:
    """Port CUDA-written PyTorch TTS models to Ascend NPUs with reviewed, reproducible recipes.

    \b
    porter apply recipes/voxcpm2.yaml       fetch, rewrite, write patched_models/voxcpm2/, smoke-test
    porter diff recipes/voxcpm2.yaml        the unified diff on stdout, nothing written (--stat: counts)
    porter transforms                       every transform, one line each
    porter explain widen-device-check       a transform's doc, params and examples
    porter validate RECIPE                  check a recipe without fetching anything
    porter scan pypi:outetts==0.4.4         every CUDA-specific site, by subsystem (md/json/sarif)
    porter init pypi:outetts==0.4.4 --name outetts   draft recipes/outetts.yaml (+ smoke script)
    porter expect RECIPE                    rewrite the recipe's expect: counts from this source
    porter remap SRC DST --rules r.yaml     rename checkpoint keys (safetensors), --verify
    porter npu-kernels 2.14.0               regenerate the NPU kernel list from a torch_npu wheel

    Exit codes: 0 ok, 1 the port has a problem (drift, stale, smoke failed), 2 usage error,
    3 internal error (a bug in porter), 130 interrupted.
    """


source_option = click.option(
    "--source", "sources", multiple=True, metavar="[ID=]DIR",
    help="Use a local directory instead of the recipe's source (offline use, an existing checkout)."
    " ID=DIR replaces the source with that id; DIR alone the first.",
)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@source_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory that receives <name>/ (default: patched_models).")
@click.option("--no-smoke", is_flag=True, help="Rewrite and write the package, skip smoke inference.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the patched package is stale.")
@click.option("--device", type=click.Choice(["auto", "npu", "npu-sim", "cuda", "cpu"]), default=None,
              help="Smoke device (default: the recipe's, else auto = Ascend if present, otherwise npu-sim).")
@click.option("--jobs", type=click.IntRange(1, 64), default=None, help="Parallel rewrite workers.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
@click.option("--update-expect", is_flag=True,
              help="First rewrite the recipe's expect: counts from this source (as `porter expect`).")
def apply(recipe: Path, sources: tuple[str, ...], out: Path | None, no_smoke: bool, check: bool,
          device: str | None, jobs: int | None, as_json: bool, update_expect: bool) -> None:
    """Apply RECIPE: write patched_models/<name>/ with port.diff, report.md and report.json."""
    from porter.port import apply as run_apply, parse_overrides

    if update_expect:
        from porter.expect import update_expect as run_update

        for line in run_update(recipe, parse_overrides(sources), write=not check).lines():
            err.print(line, markup=False)
    res = run_apply(recipe, overrides=parse_overrides(sources), out=out, smoke=not no_smoke, check=check,
                    device=device, jobs=jobs, progress=lambda m: err.print(f"[dim]porter:[/] {m}"))
    build = res.build
    if as_json and build is not None:
        click.echo(json.dumps(build.report, indent=2))
    for m in res.messages:
        err.print(f"[red]error:[/] {m}" if res.exit_code else m)
    if check:
        if res.stale:
            err.print(f"[red]stale:[/] {res.target} differs from what the recipe produces now:")
            for p in res.stale[:20]:
                err.print(f"  {p}")
            if len(res.stale) > 20:
                err.print(f"  ... and {len(res.stale) - 20} more")
        elif res.exit_code == 0:
            err.print(f"{res.target} is up to date")
    elif build is not None and not res.messages:
        r = build.report
        err.print(
            f"wrote {res.target}: {len(r['changes'])} changes in {len(r['files']['changed'])} files,"
            f" {len(r['findings'])} findings, {len(r['files']['skipped'])} skipped"
        )
    if res.smoke is not None:
        err.print(f"smoke: {'[green]passed[/]' if res.smoke.passed else '[red]FAILED[/]'}"
                  f" on {getattr(res.smoke, 'device_label', '')}")
    raise SystemExit(res.exit_code)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@source_option
@click.option("--stat", is_flag=True, help="Per-file counts of changed lines (like `git diff --stat`) instead of the diff.")
def diff(recipe: Path, sources: tuple[str, ...], stat: bool) -> None:
    """Print the unified diff RECIPE makes against the pristine upstream; write nothing."""
    from porter.port import diff as run_diff, parse_overrides

    text, build = run_diff(recipe, parse_overrides(sources))
    if stat:
        from porter.report.review import diff_stat

        text = diff_stat(text)
    sys.stdout.write(text)
    for s in build.drift:
        err.print(f"[yellow]drift:[/] step {s['index']} ({s['use']}) expected {s['expect']}, found {s['matched']}")
    raise SystemExit(1 if build.drift else 0)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
def validate(recipe: Path) -> None:
    """Check RECIPE without fetching anything: schema, transform names, their parameters."""
    from porter.recipe import load_recipe

    loaded = load_recipe(recipe)
    err.print(f"{recipe}: ok ({len(loaded.recipe.steps)} steps)")
    for note in loaded.notes:
        err.print(f"[yellow]note:[/] {note}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def transforms(as_json: bool) -> None:
    """List every transform, one line each."""
    from porter.transforms import all_transforms

    items = all_transforms()
    if as_json:
        click.echo(json.dumps([{"name": n, "safety": c.safety.value, "summary": c.summary()}
                               for n, c in items.items()], indent=2))
        return
    width = max(map(len, items), default=0)
    for name, cls in items.items():
        click.echo(f"{name:<{width}}  {cls.safety.value:<15}  {cls.summary()}")


@cli.command()
@click.argument("name")
def explain(name: str) -> None:
    """Show a transform's documentation, parameters and examples."""
    import difflib

    from porter.errors import UsageError
    from porter.transforms import all_transforms

    items = all_transforms()
    cls = items.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, items, n=1)
        raise UsageError(f"unknown transform {name!r}" + (f" (did you mean {close[0]!r}?)" if close else
                                                         " (see `porter transforms`)"))
    out = [f"{cls.name}  [safety: {cls.safety.value}]", "", textwrap.dedent(cls.__doc__ or "").strip(), ""]
    out.append("Parameters:")
    fields = cls.Params.model_fields
    if not fields:
        out.append("  (none)")
    for fname, f in fields.items():
        default = "required" if f.is_required() else f"default {f.get_default()!r}"
        desc = f" - {f.description}" if f.description else ""
        out.append(f"  {fname}: {getattr(f.annotation, '__name__', str(f.annotation))} ({default}){desc}")
    out.append(f"Default files: {', '.join(cls.default_files)}")
    out.append("")
    out.append("Examples:")
    for ex in cls.examples:
        head = f"  [{ex.id}]" + (f" with {ex.params}" if ex.params else "") + (f" ({ex.path})" if ex.path != "example.py" else "")
        out.append(head + (" -- left alone" if ex.after is None else ""))
        if ex.note:
            out.append(f"    {ex.note}")
        out.append(textwrap.indent(ex.before.rstrip(), "    - " if ex.after is not None else "      "))
        if ex.after is not None:
            out.append(textwrap.indent(ex.after.rstrip(), "    + "))
        out.append("")
    click.echo("\n".join(out).rstrip())


@cli.command()
@click.argument("source")
@click.option("--format", "fmt", type=click.Choice(["md", "json", "sarif"]), default="md", show_default=True,
              help="md for a terminal or a PR, json for tools, sarif (2.1.0) for GitHub code scanning.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of stdout.")
def scan(source: str, fmt: str, output: Path | None) -> None:
    """List every CUDA-specific site of SOURCE with its classification and owning transform.

    SOURCE: a recipe, a local directory, pypi:NAME==VERSION, git:URL@SHA40, hub:REPO@REVISION
    or ms:REPO@REVISION. Sites are grouped by subsystem; parts that are CUDA-only by
    construction (vLLM/TensorRT runtimes, custom kernels, training/evaluation) are flagged.
    """
    from porter.scan_report import render, scan as run_scan, summary

    res = run_scan(source)
    text = render(res, fmt)
    if output is not None:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    s = summary(res)
    err.print(f"{s['sites']} sites ({s['rewrite']} rewrite, {s['keep']} keep, {s['decision']} decision) in"
              f" {s['files']} files; {s['cuda_only']} CUDA-only parts" + (f"; wrote {output}" if output else ""))


@cli.command()
@click.argument("source")
@click.option("--name", required=True, help="Recipe name (lowercase): patched_models/<name>/.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the recipe (default: recipes/<name>.yaml).")
@click.option("--force", is_flag=True, help="Overwrite an existing recipe and smoke script.")
def init(source: str, name: str, out: Path | None, force: bool) -> None:
    """Draft a recipe for SOURCE: pinned source, the generic steps, expect counts, excludes, smoke.

    SOURCE: a local directory, pypi:NAME==VERSION, git:URL@SHA40, hub:REPO@REVISION or
    ms:REPO@REVISION. The draft validates and applies on SOURCE; review it before committing.
    """
    from porter.init import draft

    res = draft(source, name, out=out, force=force, progress=lambda m: err.print(f"[dim]porter:[/] {m}"))
    for line in res.summary_lines():
        err.print(line)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@source_option
@click.option("--check", is_flag=True, help="Change nothing; exit 1 when a count differs.")
def expect(recipe: Path, sources: tuple[str, ...], check: bool) -> None:
    """Rewrite RECIPE's expect: counts in place from what its steps match now (comments kept)."""
    from porter.expect import update_expect
    from porter.port import parse_overrides

    res = update_expect(recipe, parse_overrides(sources), write=not check)
    for line in res.lines():
        err.print(line, markup=False)
    raise SystemExit(1 if check and res.changed else 0)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code it documents (README: Exit codes), never a traceback for
    bad input. Every way a command can end lands here: `raise SystemExit(n)`, click's
    `ctx.exit(n)` (returned, not raised, under standalone_mode=False), a click usage error, a
    PorterError, Ctrl-C, and a bug (exit 3)."""
    try:
        rv = cli.main(args=argv, prog_name="porter", standalone_mode=False)
    except SystemExit as exc:
        return _exit_code(exc.code)
    except click.exceptions.Abort:  # click's name for Ctrl-C (and EOF at a prompt)
        err.print("interrupted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    except PorterError as exc:
        for line in str(exc).splitlines():
            err.print(line, markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted; nothing half-written was left in place")
        return 130
    except Exception:  # a bug in porter: show it, exit 3 so it is not mistaken for a port result
        err.print("porter: internal error (please report it with the traceback below)")
        traceback.print_exc()
        return 3
    # ctx.exit(n) comes back as the value n; a command that returns normally gives None
    return _exit_code(rv) if isinstance(rv, int) else 0


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    if isinstance(code, bool):
        return int(code)
    err.print(str(code), markup=False)  # sys.exit("message"): Python's own convention
    return 1


if __name__ == "__main__":
    sys.exit(main())

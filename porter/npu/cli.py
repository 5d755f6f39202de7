"""Click commands of the npu layer; the lead registers them in the `porter` group (porter/cli.py).

    porter npu-kernels VERSION_OR_WHEEL [--out-dir DIR] [--check]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from porter.npu.kernels import KernelListError, default_out_dir, regenerate_files


class BadInput(click.ClickException):
    """A clear message, exit code 2 (the user asked for something impossible), no traceback."""

    exit_code = 2


@click.command("npu-kernels")
@click.argument("version_or_wheel")
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the files (default: porter/data of this porter).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Write nothing; exit 1 if the files in the output directory differ from a fresh extraction.",
)
def npu_kernels(version_or_wheel: str, out_dir: Path | None, check: bool) -> None:
    """Extract the NPU kernel list and the transfer_to_npu map of torch_npu VERSION_OR_WHEEL.

    VERSION_OR_WHEEL is a torch_npu release on PyPI (downloaded with `pip download --no-deps`,
    never installed or imported) or the path of a torch_npu wheel. Writes
    torch_npu_kernels-VERSION.txt and torch_npu_transfer-VERSION.json and prints their paths.
    """
    target = out_dir or default_out_dir()
    try:
        if check:
            with tempfile.TemporaryDirectory() as tmp:
                fresh = regenerate_files(version_or_wheel, tmp)
                stale = [
                    str(target / p.name)
                    for p in (fresh.kernels, fresh.transfer)
                    if not (target / p.name).is_file()
                    or (target / p.name).read_text(encoding="utf-8") != p.read_text(encoding="utf-8")
                ]
            if stale:
                click.echo(f"stale against {fresh.data.wheel_name}: " + ", ".join(stale), err=True)
                sys.exit(1)
            click.echo(f"up to date: torch_npu {fresh.data.version} in {target}", err=True)
            return
        done = regenerate_files(version_or_wheel, target)
    except KernelListError as exc:
        raise BadInput(str(exc)) from None
    click.echo(str(done.kernels))
    click.echo(str(done.transfer))
    click.echo(
        f"torch_npu {done.data.version}: {len(done.data.ops)} operators, "
        f"{len(done.data.transfer['cuda_to_npu'])} torch.cuda names mapped to torch.npu "
        f"(from {done.data.wheel_name}, sha256 {done.data.sha256[:12]}...)",
        err=True,
    )

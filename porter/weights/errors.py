"""The one exception family of `porter.weights`.

Every problem with the user's input (a checkpoint, an index, a rules file, the destination) is a
`WeightsError` whose message names the file and the problem; the CLI prints it and exits 2.
A `VerifyError` means porter itself wrote bytes that do not match the source (exit 1).
"""

from __future__ import annotations

try:  # the CLI's exit-code classes (porter.errors), so `porter apply` handles these like its own
    from porter.errors import PortProblem, UsageError
except ImportError:  # pragma: no cover - porter.errors not present in this checkout

    class UsageError(Exception):  # type: ignore[no-redef]
        exit_code = 2

    class PortProblem(Exception):  # type: ignore[no-redef]
        exit_code = 1


class WeightsError(UsageError):
    """Bad input to a remap: the message names the file, the place and the problem."""

    exit_code = 2


class VerifyError(WeightsError, PortProblem):
    """`--verify` found output bytes that differ from the source: a porter or disk problem."""

    exit_code = 1


def joined(problems: list[str], limit: int = 20) -> str:
    """Several problems as one message, one per line, capped at `limit` lines."""
    shown = problems[:limit]
    more = len(problems) - len(shown)
    text = "\n".join(shown)
    return text + (f"\n... and {more} more" if more > 0 else "")

"""The `porter` executable (and `python -m porter`): Ctrl-C and termination at any moment.

This module imports nothing of porter's until it is inside the `try`, so a Ctrl-C while the
command's modules are still importing exits 130 quietly like one during the work, instead of a
traceback. SIGTERM (a CI job cancelled, `kill`) takes the same orderly unwind, so the `finally`
blocks run: temporary directories are removed and a smoke subprocess's process group is killed.
The first signal starts the unwind; later ones are ignored until it is done, so a second Ctrl-C
cannot interrupt the clean-up. Exit codes: README, "Exit codes".
"""

import signal
import sys


def _interrupt(signum, frame):  # noqa: ARG001 - a signal handler's signature
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv=None) -> int:
    code = 130
    try:
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        from porter.cli import main as run

        code = run(argv)
    except KeyboardInterrupt:
        try:
            sys.stderr.write("porter: interrupted\n")
        except OSError:
            pass
        code = 130
    finally:
        # The work is over: a signal arriving now must not print a traceback from the
        # interpreter's shutdown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(main())

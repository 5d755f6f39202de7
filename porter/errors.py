"""The two kinds of failure the CLI turns into exit codes (README: Exit codes).

UsageError  -> exit 2: the user asked for something impossible (bad recipe, missing source,
               bad arguments). The message names the file, the place and the fix.
PortProblem -> exit 1: the port itself has a problem (upstream drift, a stale patch, a failed
               smoke check).
"""


class PorterError(Exception):
    exit_code = 2


class UsageError(PorterError):
    exit_code = 2


class PortProblem(PorterError):
    exit_code = 1

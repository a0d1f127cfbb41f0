"""One exception type for every user-facing problem: the CLI prints it as one line and exits 2."""


class PeftlabError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise PeftlabError(message)


def cli_exit_code(body) -> int:
    """Run a command's body; a PeftlabError becomes its one-line message on stderr and exit code 2."""
    import sys

    try:
        return body() or 0
    except PeftlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

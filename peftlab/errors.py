"""One exception type for every user-facing problem: the CLI prints it as one line and exits 2."""


class PeftlabError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise PeftlabError(message)

"""The one error a scenario file can cause.

The CLI prints it verbatim and exits 2, so it carries the field path that is
wrong (as a user would write it: ``nodes[1].pods[0].ip``) and a one-line
problem, and nothing else escapes the loader for bad input.
"""


def _printable(text: str) -> str:
    """Escape control characters (a YAML key may hold a newline) so the
    message stays on one line and shows what was really written."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


class ScenarioError(Exception):
    """A scenario file is unreadable or invalid.

    ``path`` is the field path (``""`` for a whole-file problem such as a
    missing file or a syntax error) and ``problem`` one line saying what is
    wrong; ``str(error)`` is ``"path: problem"`` (just the problem when there
    is no path).
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = _printable(path)
        self.problem = _printable(" ".join(problem.split()))
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)

"""The one error a scenario file can cause.

The CLI prints it verbatim and exits 2, so it carries the field path that is
wrong (as a user would write it: ``nodes[1].pods[0].ip``) and a one-line
problem, and nothing else escapes the loader for bad input.
"""


class ScenarioError(Exception):
    """A scenario file is unreadable or invalid.

    ``path`` is the field path (``""`` for a whole-file problem such as a
    missing file or a syntax error) and ``problem`` one line saying what is
    wrong; ``str(error)`` is ``"path: problem"`` (just the problem when there
    is no path).
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = " ".join(problem.split())
        super().__init__(f"{path}: {self.problem}" if path else self.problem)

"""Why a walk is not replayed."""


class Unsupported(Exception):
    """A recorded walk that cannot be replayed; the message is the reason."""

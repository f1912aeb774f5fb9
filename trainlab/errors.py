"""The one exception type for mistakes a user can fix.

The CLI prints it as a single line `error: ...` plus `hint: ...` and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a recipe key, a path, a dataset, a checkpoint. `hint` says how to fix it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of a library's exception message (or its type's name): for our one-line errors, which
    never paste a library's multi-line text."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]

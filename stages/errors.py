"""The one exception type for a user's mistake: the CLI prints its message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: a wrong path, flag, value or a mismatched checkpoint. Never a bug of ours."""

"""The one exception type for mistakes a user can make (bad file, bad option).

The CLI prints it as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a message that names the file or option and says what to do."""

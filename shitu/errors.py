"""The one exception type for mistakes a user can make; the CLI prints its message and exits 1."""


class ShituError(Exception):
    """A problem with the user's input or files, explained in one line."""


class BadImage(ShituError):
    """A file that cannot be read as an image; galleries skip these and report them."""


class UsageError(ShituError):
    """A call that says too little to act on (nothing to remove, a file without a label): the CLI shows
    its usage with the message and exits 2, as for a missing option."""

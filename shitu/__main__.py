"""``python -m shitu COMMAND ...``: the same commands as ``shitu``."""

from shitu.cli import app

app(prog_name="shitu")

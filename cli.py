"""Run shitu from a checkout, ``python cli.py COMMAND ...`` (or ``torchrun ... cli.py train``).

The commands live in ``shitu/cli.py``; an install provides them as ``shitu`` and ``python -m shitu``.
"""

from shitu.cli import app

if __name__ == "__main__":
    app(prog_name="shitu")

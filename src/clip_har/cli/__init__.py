"""The ``clip-har`` command line: one Typer sub-app per area, assembled in ``cli/main.py``."""

"""``clip-har registry``: register bundles in MLflow's model registry, inspect, compare,
promote through the gate, roll back, and read the promotion history."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="The MLflow model registry: register, list, show, compare, promote, rollback, history.",
    no_args_is_help=True,
)

"""``clip-har registry``: register bundles in MLflow's model registry, inspect, compare,
promote through the gate, roll back, and read the promotion history."""

from __future__ import annotations

import typer

from clip_har.cli.registry_promotion import history, promote, rollback
from clip_har.cli.registry_versions import compare, list_models, register, show

app = typer.Typer(
    help="The MLflow model registry: register, list, show, compare, promote, rollback, history.",
    no_args_is_help=True,
)

app.command("register")(register)
app.command("list")(list_models)
app.command("show")(show)
app.command("compare")(compare)
app.command("promote")(promote)
app.command("rollback")(rollback)
app.command("history")(history)

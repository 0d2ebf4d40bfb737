"""``clip-har registry promote|rollback|history``: move an alias through the promotion gate,
restore its previous holder, and read the record of every decision."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import console, err_console, settings_from
from clip_har.errors import UsageError
from clip_har.registry.store import NO_PROMOTION, existing_registry_client

if TYPE_CHECKING:
    from clip_har.registry.history import Event
    from clip_har.registry.promotion import Decision


def _alias(ctx: typer.Context, name: str, alias: str | None) -> str:
    """``--alias``, else params ``registry.promote``, checked with ``name`` before any
    store is opened."""
    from clip_har.registry.promotion import check_promotion_alias
    from clip_har.registry.store import check_name

    check_name(name)
    if alias is None:
        alias = settings_from(ctx).registry.promote
        if alias == NO_PROMOTION:
            raise UsageError("params registry.promote is 'none': name the alias with --alias")
    return check_promotion_alias(alias)


def _report(decision: Decision, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(decision.to_json(), indent=2))
    else:
        console.print(escape(decision.message), soft_wrap=True)  # one line, never re-wrapped


def promote(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="Registered model name."),
    version: int = typer.Argument(..., metavar="VERSION", min=1, help="Model version to promote."),
    alias: str | None = typer.Option(
        None, "--alias", help="Alias to move (default: params registry.promote)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Promote even if the gate refuses (needs --reason)."
    ),
    reason: str | None = typer.Option(
        None, "--reason", help="Why: kept in the promotion history (required with --force)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Point --alias of NAME at VERSION through the promotion gate.

    The gate refuses a version whose primary metric (params registry.primary_metric) is
    worse than the current holder's by more than params registry.tolerance (higher is
    better unless params registry.greater_is_better is false), or that lacks the metric.
    A refusal exits 1 and is recorded like every decision (`clip-har registry history`)."""
    from clip_har.registry.promotion import check_force, promote_version

    settings = settings_from(ctx).registry
    target = _alias(ctx, name, alias)
    check_force(force, reason)  # before the store is opened
    decision = promote_version(
        existing_registry_client(),
        name,
        version,
        target,
        settings=settings,
        force=force,
        reason=reason,
    )
    _report(decision, as_json)


def rollback(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="Registered model name."),
    alias: str | None = typer.Option(
        None, "--alias", help="Alias to roll back (default: params registry.promote)."
    ),
    reason: str | None = typer.Option(None, "--reason", help="Why: kept in the promotion history."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Point --alias of NAME back at the version that held it before, as the promotion
    history records it; a second rollback goes one further back. Versions deleted since are
    skipped. The restored version does not pass through the gate again."""
    from clip_har.registry.promotion import rollback as roll_back

    target = _alias(ctx, name, alias)
    decision = roll_back(existing_registry_client(), name, target, reason=reason)
    _report(decision, as_json)


def _version(number: int | None) -> str:
    return "-" if number is None else str(number)


def _metric(event: Event) -> str:
    """The metric name, then candidate vs holder, then the tolerance (none for a rollback)."""
    lines = [event.metric, f"{_score(event.candidate)} vs {_score(event.holder)}"]
    if event.tolerance is not None:
        lines.append(f"tolerance {event.tolerance:g}")
    if event.greater_is_better is False:
        lines.append("lower is better")
    return "\n".join(lines)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


_ACTION_STYLE = {"promote": "green", "force": "yellow", "refuse": "red", "rollback": "cyan"}


def history(
    name: str = typer.Argument(..., metavar="NAME", help="Registered model name."),
    alias: str | None = typer.Option(None, "--alias", help="Only this alias (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the events as JSON."),
) -> None:
    """Every promotion, refusal, forced promotion and rollback of NAME, oldest first: time
    (UTC), user, action, alias, from → to version, the primary metric of the candidate vs
    the holder with the tolerance, and the reason."""
    from clip_har.registry.history import history as read_history
    from clip_har.registry.promotion import check_promotion_alias
    from clip_har.registry.store import check_name

    check_name(name)
    if alias is not None:
        check_promotion_alias(alias)
    events = read_history(existing_registry_client(), name, alias)
    if as_json:
        typer.echo(json.dumps([e.to_json() | {"tag": e.tag} for e in events], indent=2))
        return
    if not events:
        where = f" of @{alias}" if alias else ""
        err_console.print(escape(f"'{name}' has no promotion history{where} yet"))
        return
    # stacked cells keep the table readable at 80 columns; the reason takes the rest
    table = Table(title=escape(f"promotion history of {name}"), show_lines=True)
    table.add_column("time (UTC)\nuser", no_wrap=True)
    table.add_column("action\nalias", no_wrap=True)
    table.add_column("from → to", no_wrap=True)
    table.add_column("candidate\nvs holder", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for event in events:
        style = _ACTION_STYLE[event.action]
        table.add_row(
            f"{event.when:%Y-%m-%d}\n{event.when:%H:%M:%S}\n{escape(event.user)}",
            f"[{style}]{event.action}[/{style}]\n@{escape(event.alias)}",
            f"{_version(event.from_version)} → {event.to_version}",
            escape(_metric(event)),
            escape(event.reason or "-"),
        )
    console.print(table)

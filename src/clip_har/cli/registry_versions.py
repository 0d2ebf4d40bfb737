"""``clip-har registry register|list|show|compare``: register a bundle as an MLflow model
version, and inspect and compare the registered versions (docs/registry.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import console, err_console, settings_from
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.errors import UsageError
from clip_har.io import write_json_atomic
from clip_har.registry.store import NO_PROMOTION, existing_registry_client

if TYPE_CHECKING:
    from mlflow import MlflowClient

DISABLED = "registry.enabled is false in params.yaml"


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def register(
    ctx: typer.Context,
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle directory."),
    name: str | None = typer.Option(
        None, "--name", help="Registered model name (default: params registry.name)."
    ),
    evaluation: Path | None = typer.Option(
        None,
        "--evaluation",
        metavar="DIR",
        help="The bundle's `clip-har evaluate` output: logged with the model, its metrics "
        "tag the version, and `registry compare` runs the paired test on it.",
    ),
    promote: str | None = typer.Option(
        None,
        "--promote",
        metavar="ALIAS",
        help="Then promote the version to ALIAS through the gate ('none': no promotion). "
        "A refusal is a warning, not a failure.",
    ),
    record: Path | None = output_option(
        None, "--record", kind="file", help="Also write what was registered as JSON."
    ),
    if_enabled: bool = typer.Option(
        False,
        "--if-enabled",
        help="Register only when params registry.enabled is true (the pipeline's stage).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
    force: bool = force_option(),
) -> None:
    """Log BUNDLE as an MLflow pyfunc model (serving its best passing export: onnx-int8,
    onnx, else torch) and register it as a new version of --name, linked to the run that
    trained it and tagged with its data version, git commit, backbone, metrics and parity."""
    from clip_har.registry.register import check_bundle, register_bundle
    from clip_har.registry.store import check_alias, check_name, registry_client

    settings = settings_from(ctx)
    if name is not None and not name.strip():
        raise UsageError("--name must not be empty (omit it to use params registry.name)")
    model_name = check_name(settings.registry.name if name is None else name)
    alias = None if promote in (None, NO_PROMOTION) else check_alias(promote)
    prepare_output(
        record, suffixes=(".json",), inputs=[bundle, evaluation], force=force, option="--record"
    )
    if if_enabled and not settings.registry.enabled:
        skipped = {"registered": False, "reason": DISABLED}
        if record is not None:
            write_json_atomic(record, skipped)
        err_console.print(f"not registering {escape(str(bundle))}: {DISABLED}")
        if as_json:
            _echo_json(skipped)
        return
    check_bundle(bundle)  # a damaged bundle fails before the store is touched
    client = registry_client()
    with err_console.status(f"registering {escape(str(bundle))} as {escape(model_name)}"):
        registered = register_bundle(
            bundle,
            model_name,
            client=client,
            evaluation=evaluation,
            experiment=settings.train.experiment,
        )
    promotion = None if alias is None else _promote(client, registered, alias, ctx)
    result = {
        "registered": True,
        "name": registered.name,
        "version": registered.version,
        "uri": registered.uri,
        "format": registered.format,
        "run_id": registered.run_id,
        "promotion": promotion,
    }
    if record is not None:
        write_json_atomic(record, result)
    if as_json:
        _echo_json(result)
        return
    console.print(
        f"registered [bold]{escape(registered.name)}[/bold] version {registered.version}: "
        f"{escape(registered.uri)}\n  format  {registered.format} (the best passing export)\n"
        f"  run     {registered.run_id}"
    )
    where = f"@{alias}" if promotion and promotion["promoted"] else f"/{registered.version}"
    next_steps = [f"clip-har predict IMAGES --bundle models:/{registered.name}{where}"]
    if not (promotion and promotion["promoted"]):
        next_steps.insert(
            0,
            f"clip-har registry promote {registered.name} {registered.version} --alias production",
        )
    console.print("next:\n" + "\n".join(f"  {escape(step)}" for step in next_steps))


def _promote(
    client: MlflowClient, registered: Any, alias: str, ctx: typer.Context
) -> dict[str, Any]:
    """Promote the new version through the gate; a refusal is recorded, not raised."""
    from clip_har.errors import PromotionRefusedError
    from clip_har.registry.promotion import promote_version

    settings = settings_from(ctx)
    try:
        decision = promote_version(
            client, registered.name, registered.version, alias, settings=settings.registry
        )
    except PromotionRefusedError as exc:
        err_console.print(f"[yellow]warning:[/yellow] not promoted to @{alias}: {escape(str(exc))}")
        return {"alias": alias, "promoted": False, "message": str(exc)}
    if decision.promoted:
        console.print(escape(decision.message))
    else:
        err_console.print(f"[yellow]warning:[/yellow] {escape(decision.message)}")
    return {"alias": alias, "promoted": decision.promoted, "message": decision.message}


def list_models(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the models as JSON."),
) -> None:
    """Every registered model: its latest version, and each alias with its version and
    primary metric (params registry.primary_metric)."""
    from clip_har.registry.lineage import list_models as registered_models
    from clip_har.registry.store import registry_client, store_is_missing, tracking_uri

    metric = settings_from(ctx).registry.primary_metric
    uri = tracking_uri()  # a store that does not exist lists nothing (and is not created)
    models = [] if store_is_missing(uri) else registered_models(registry_client(uri), metric)
    if as_json:
        _echo_json(models)
        return
    if not models:
        err_console.print(f"no registered models in {escape(tracking_uri())}")
        return
    table = Table(title=f"registered models ({escape(tracking_uri())})")
    for header in ("name", "versions", "latest", f"aliases ({metric})"):
        table.add_column(header, overflow="fold")
    for model in models:
        aliases = ", ".join(
            f"@{alias} → {held['version']} ({_number(held[metric])})"
            for alias, held in model["aliases"].items()
        )
        table.add_row(
            escape(model["name"]),
            str(model["versions"]),
            str(model["latest_version"]),
            escape(aliases or "—"),
        )
    console.print(table)


def show(
    ctx: typer.Context,
    reference: str = typer.Argument(
        ...,
        metavar="NAME[/VERSION|@ALIAS]",
        help="A registered model (lists its versions) or one version (prints its lineage); "
        "the models:/ prefix is allowed.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """The versions of a registered model, or the lineage of one version: run and its
    training params, data version, git commit, backbone, metrics, parity, parent bundle."""
    from clip_har.registry.lineage import version_lineage, version_rows
    from clip_har.registry.store import SCHEME, check_name, get_model, get_version, parse_ref

    text = reference.removeprefix(SCHEME)
    single = "/" in text or "@" in text
    ref = parse_ref(reference) if single else None
    name = ref.name if ref is not None else check_name(text)
    client = existing_registry_client()
    if ref is None:
        get_model(client, name)
        metric = settings_from(ctx).registry.primary_metric
        rows = version_rows(client, name, metric)
        if as_json:
            _echo_json(rows)
            return
        table = Table(title=escape(f"{name}: {len(rows)} versions"))
        for header in ("version", "created", "format", metric, "aliases", "data version"):
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(
                str(row["version"]),
                row["created"],
                escape(row["format"] or "—"),
                _number(row[metric]),
                escape(", ".join(f"@{a}" for a in row["aliases"]) or "—"),
                escape(row["data_version"] or "—"),
            )
        console.print(table)
        return
    lineage = version_lineage(client, get_version(client, ref))
    if as_json:
        _echo_json(lineage)
        return
    _print_lineage(lineage)


def _print_lineage(lineage: dict[str, Any]) -> None:
    table = Table(title=escape(f"{lineage['name']} version {lineage['version']}"))
    table.add_column("", no_wrap=True)
    table.add_column("value", overflow="fold")
    run = lineage["run_id"] or "—"
    if lineage["run_status"]:
        run += f" ({lineage['run_status']})"
    rows = [
        ("uri", lineage["uri"]),
        ("aliases", ", ".join(f"@{a}" for a in lineage["aliases"]) or "—"),
        ("created", lineage["created"]),
        ("description", lineage["description"] or "—"),
        ("format", lineage["format"] or "—"),
        ("run", run),
        ("training run", lineage["training_run_id"] or "—"),
        ("data version", lineage["data_version"] or "—"),
        ("git commit", lineage["git_commit"] or "—"),
        ("backbone", lineage["backbone_fingerprint"] or "—"),
        ("parent bundle", lineage["parent_bundle"] or "—"),
        ("evaluation", lineage["evaluation_path"] or "—"),  # an artifact of the run
    ]
    for field, value in rows:
        table.add_row(field, escape(str(value)))
    table.add_section()
    for key, value in lineage["params"].items():
        table.add_row(escape(key), escape(value))
    table.add_section()
    for key, value in lineage["metrics"].items():
        table.add_row(escape(f"metric {key}"), f"{value:.4f}")
    table.add_section()
    for fmt, parity in lineage["parity"].items():
        verdict = "passed" if parity.get("passed") else "FAILED"
        table.add_row(
            escape(f"parity {fmt}"),
            f"{verdict}, max |Δp| {parity.get('max_abs_diff', float('nan')):.2e}, "
            f"top-1 agreement {parity.get('top1_agreement', float('nan')):.1%}",
        )
    console.print(table)


def compare(
    first: str = typer.Argument(..., metavar="NAME/VERSION", help="The baseline version."),
    second: str = typer.Argument(..., metavar="NAME/VERSION", help="The version to compare."),
    seed: int = typer.Option(0, "--seed", min=0, help="Bootstrap seed of the paired test."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Every metric both versions have, with its delta (second minus first), and, when
    both were registered with --evaluation, the paired comparison of `evaluate compare`
    (McNemar test and paired bootstrap intervals on the images both evaluated)."""
    from clip_har.evaluation.compare_runs import HEADERS, table_rows
    from clip_har.registry.store import parse_ref
    from clip_har.registry.versions_compare import compare_versions

    refs = [parse_ref(first), parse_ref(second)]
    client = existing_registry_client()
    with err_console.status("comparing"):
        report = compare_versions(client, refs[0], refs[1], seed=seed)
    if as_json:
        _echo_json(report)
        return
    table = Table(title=escape(f"{report['second']} vs {report['first']}"))
    for header in ("metric", report["first"], report["second"], "Δ"):
        table.add_column(escape(header), justify="right" if header != "metric" else "left")
    for row in report["metrics"]:
        table.add_row(
            escape(row["metric"]),
            f"{row['first']:.4f}",
            f"{row['second']:.4f}",
            f"{row['delta']:+.4f}",
        )
    console.print(table if report["metrics"] else "no metric in common")
    if report["paired"] is None:
        err_console.print(escape(report["note"]))
        return
    paired = Table(title="paired comparison on the images both evaluated")
    for header in HEADERS:
        paired.add_column(header, overflow="fold")
    for cells in table_rows([report["paired"]]):
        paired.add_row(*(escape(c) for c in cells))
    console.print(paired)
    for note in report.get("warnings", []):
        err_console.print(f"[yellow]warning:[/yellow] {escape(note)}")

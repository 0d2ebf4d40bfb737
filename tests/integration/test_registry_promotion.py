"""The promotion gate, the promotion history and rollback, on a real MLflow SQLite store.

Versions are made directly with ``MlflowClient`` (tagged with their metric as ``register``
tags them), then moved through the gate by ``clip-har registry promote|rollback|history``
in subprocesses, as a user would, and by the library functions.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import run_cli
from typer.testing import CliRunner, Result

from clip_har.cli.common import EXIT_FAILURE, EXIT_USAGE
from clip_har.cli.main import app
from clip_har.config import RegistrySettings
from clip_har.errors import ModelRegistryError, PromotionRefusedError, UsageError
from clip_har.registry.history import (
    HISTORY_TAG_PREFIX,
    MAX_EVENT_CHARS,
    MAX_REASON_CHARS,
    TRUNCATED,
    history,
)
from clip_har.registry.promotion import current_holder, promote_version, rollback
from clip_har.registry.store import TAG_METRIC

if TYPE_CHECKING:
    from mlflow import MlflowClient

pytestmark = pytest.mark.integration

NAME = "har"
ALIAS = "production"
# version -> accuracy (None: the version has no metric tag)
ACCURACY: dict[int, float | None] = {1: 0.80, 2: 0.70, 3: 0.795, 4: 0.90, 5: 0.76, 6: None}
GATE = RegistrySettings()  # the defaults: accuracy, tolerance 0.01


@pytest.fixture(scope="module")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding NAME with versions 1-6 (created once; each test gets a copy)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry-template")
    database = root / "mlruns.db"
    client = MlflowClient(
        tracking_uri=f"sqlite:///{database}", registry_uri=f"sqlite:///{database}"
    )
    client.create_registered_model(NAME)
    for version, accuracy in ACCURACY.items():
        source = root / "sources" / str(version)
        source.mkdir(parents=True)
        created = client.create_model_version(NAME, source=str(source))
        assert int(created.version) == version
        if accuracy is not None:
            client.set_model_version_tag(NAME, str(version), f"{TAG_METRIC}accuracy", str(accuracy))
    return database


@dataclass
class Store:
    uri: str
    folder: Path

    @property
    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri, "CLIP_HAR_USER": "bob"}

    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The installed ``clip-har``, in a subprocess, on this store (``env`` added)."""
        return run_cli(*args, env=self.env | env, cwd=self.folder, timeout=120)

    def invoke(self, *args: str, **env: str) -> Result:
        """The same command in-process (seconds cheaper: MLflow is imported already)."""
        return CliRunner(env=self.env | env).invoke(app, list(args))


@pytest.fixture
def store(template_store: Path, tmp_path: Path) -> Iterator[Store]:
    database = Path(shutil.copy(template_store, tmp_path / "mlruns.db"))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield Store(f"sqlite:///{database}", tmp_path)
    root.handlers[:] = handlers  # an in-process command configures logging: undo it
    root.setLevel(level)


def holder(store: Store) -> int | None:
    held = current_holder(store.client(), NAME, ALIAS)
    return None if held is None else int(held.version)


def promote(
    store: Store, version: int, *, force: bool = False, reason: str | None = None, user: str = "t"
) -> None:
    client = store.client()
    promote_version(
        client, NAME, version, ALIAS, settings=GATE, force=force, reason=reason, user=user
    )


def test_a_worse_candidate_is_refused_and_the_alias_stays(store: Store) -> None:
    promote(store, 1)
    refused = store.cli("registry", "promote", NAME, "2", "--alias", ALIAS)
    assert refused.returncode == EXIT_FAILURE, refused.stderr
    message = " ".join(refused.stderr.split())
    for shown in ("refused", "0.7000", "0.8000", "tolerance 0.01", "--force --reason"):
        assert shown in message, message
    assert "Traceback" not in refused.stderr
    assert holder(store) == 1
    last = history(store.client(), NAME, ALIAS)[-1]
    assert (last.action, last.from_version, last.to_version) == ("refuse", 1, 2)
    assert (last.candidate, last.holder, last.tolerance, last.user) == (0.70, 0.80, 0.01, "bob")


def test_a_better_candidate_is_promoted(store: Store) -> None:
    promote(store, 1)
    client = store.client()
    decision = promote_version(client, NAME, 4, ALIAS, settings=GATE, reason="better", user="al")
    assert (decision.action, decision.promoted, decision.previous) == ("promote", True, 1)
    assert holder(store) == 4
    assert decision.event is not None and decision.event.reason == "better"
    assert history(client, NAME, ALIAS)[-1] == decision.event


def test_the_first_promotion_passes_and_a_repeat_changes_nothing(store: Store) -> None:
    promote(store, 2)  # no holder: nothing to compare with
    assert holder(store) == 2
    again = promote_version(store.client(), NAME, 2, ALIAS, settings=GATE)
    assert (again.action, again.promoted, again.event) == ("unchanged", False, None)
    assert len(history(store.client(), NAME, ALIAS)) == 1


def test_a_candidate_without_the_metric_is_refused_when_the_holder_has_it(store: Store) -> None:
    promote(store, 1)
    with pytest.raises(PromotionRefusedError, match="has no accuracy"):
        promote(store, 6)
    assert holder(store) == 1


def test_a_misspelled_primary_metric_refuses_instead_of_turning_the_gate_off(
    store: Store,
) -> None:
    promote(store, 1)
    refused = store.cli(
        *("registry", "promote", NAME, "2", "--alias", ALIAS),
        CLIP_HAR_REGISTRY__PRIMARY_METRIC="acuracy",
    )
    assert refused.returncode == EXIT_FAILURE, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    for shown in ("refused", "no acuracy", "neither has version 1", "it has accuracy"):
        assert shown in message, message
    assert "registry.primary_metric" in message and "Traceback" not in refused.stderr
    assert holder(store) == 1
    last = history(store.client(), NAME, ALIAS)[-1]
    assert (last.action, last.metric, last.to_version) == ("refuse", "acuracy", 2)


def test_a_first_promotion_needs_the_metric_unless_forced(store: Store) -> None:
    misspelled = RegistrySettings(primary_metric="acuracy")
    with pytest.raises(PromotionRefusedError, match=r"no holder yet.*it has accuracy"):
        promote_version(store.client(), NAME, 1, ALIAS, settings=misspelled)
    with pytest.raises(PromotionRefusedError, match="no metric tags at all"):
        promote(store, 6)
    assert holder(store) is None
    promote(store, 6, force=True, reason="a baseline without an evaluation")
    assert holder(store) == 6
    assert [e.action for e in history(store.client(), NAME, ALIAS)] == [
        "refuse",
        "refuse",
        "force",
    ]


def test_lower_is_better_when_greater_is_better_is_false(store: Store) -> None:
    lower = RegistrySettings(greater_is_better=False)  # as for a loss or ece
    promote_version(store.client(), NAME, 1, ALIAS, settings=lower)  # 0.80
    refused = store.invoke(
        *("registry", "promote", NAME, "4", "--alias", ALIAS),  # 0.90 > 0.80 + 0.01
        CLIP_HAR_REGISTRY__GREATER_IS_BETTER="false",
    )
    assert refused.exit_code == EXIT_FAILURE, refused.output
    message = " ".join(refused.stderr.split())
    for shown in ("0.9000, above version 1", "plus the tolerance 0.01", "lower is better"):
        assert shown in message, message
    assert "at most 0.8100" in message and holder(store) == 1
    passed = promote_version(store.client(), NAME, 5, ALIAS, settings=lower)  # 0.76
    assert passed.action == "promote" and "lower is better" in passed.message
    assert holder(store) == 5
    with pytest.raises(PromotionRefusedError, match="below version 5"):
        promote(store, 2)  # the default direction again: 0.70 < 0.76 - 0.01
    events = history(store.client(), NAME, ALIAS)
    assert [e.greater_is_better for e in events] == [False, False, False, True]
    shown = store.invoke("registry", "history", NAME)
    assert shown.exit_code == 0 and "lower is better" in shown.stdout, shown.output


def test_the_promote_message_is_one_line_on_a_narrow_terminal(store: Store) -> None:
    promoted = store.cli("registry", "promote", NAME, "1", "--alias", ALIAS, COLUMNS="40")
    assert promoted.returncode == 0, promoted.stderr
    line = promoted.stdout.strip()
    assert "\n" not in line and len(line) > 40, promoted.stdout
    assert line.endswith("the first holder, accuracy 0.8000"), line
    refused = store.cli("registry", "promote", NAME, "2", "--alias", ALIAS, COLUMNS="40")
    assert refused.returncode == EXIT_FAILURE
    assert refused.stderr.strip().count("\n") == 0, refused.stderr


def test_a_forced_promotion_needs_a_reason_and_is_recorded(store: Store) -> None:
    promote(store, 1)
    bare = store.invoke("registry", "promote", NAME, "2", "--alias", ALIAS, "--force")
    assert bare.exit_code == EXIT_USAGE and "--reason" in bare.stderr, bare.output
    with pytest.raises(UsageError):
        promote(store, 2, force=True, reason="   ")
    assert holder(store) == 1
    forced = store.cli(
        *("registry", "promote", NAME, "2", "--alias", ALIAS),
        *("--force", "--reason", "hotfix for the demo", "--json"),
    )
    assert forced.returncode == 0, forced.stderr
    decision = json.loads(forced.stdout)
    assert (decision["action"], decision["promoted"], decision["previous"]) == ("force", True, 1)
    assert decision["event"]["reason"] == "hotfix for the demo"
    assert decision["event"]["user"] == "bob"
    assert holder(store) == 2


def test_the_tolerance_comes_from_params(store: Store) -> None:
    promote(store, 1)
    with pytest.raises(PromotionRefusedError):  # 0.76 < 0.80 - 0.01
        promote(store, 5)
    params = store.folder / "params.yaml"
    params.write_text("registry:\n  tolerance: 0.05\n")
    passed = store.invoke("--params", str(params), "registry", "promote", NAME, "5", "--json")
    assert passed.exit_code == 0, passed.output
    decision = json.loads(passed.stdout)
    assert (decision["alias"], decision["action"]) == (ALIAS, "promote")  # alias from params
    assert decision["event"]["tolerance"] == 0.05
    assert holder(store) == 5
    promote(store, 3)  # 0.795 vs 0.76: better
    assert holder(store) == 3


def test_rollback_restores_the_previous_holders_in_turn(store: Store) -> None:
    promote(store, 1)
    promote(store, 2, force=True, reason="needed")
    promote(store, 4)
    back = store.cli("registry", "rollback", NAME, "--alias", ALIAS, "--reason", "4 misbehaves")
    assert back.returncode == 0, back.stderr
    assert holder(store) == 2
    second = rollback(store.client(), NAME, ALIAS, user="carol")
    assert (second.action, second.version, second.previous) == ("rollback", 1, 2)
    assert holder(store) == 1
    with pytest.raises(ModelRegistryError, match="no previous holder"):
        rollback(store.client(), NAME, ALIAS)
    assert holder(store) == 1
    events = history(store.client(), NAME, ALIAS)
    assert [(e.action, e.from_version, e.to_version) for e in events[-2:]] == [
        ("rollback", 4, 2),
        ("rollback", 2, 1),
    ]
    assert events[-2].reason == "4 misbehaves" and events[-2].tolerance is None


def test_rollback_skips_a_deleted_version(store: Store) -> None:
    promote(store, 1)
    promote(store, 3)
    promote(store, 4)
    store.client().delete_model_version(NAME, "3")
    decision = rollback(store.client(), NAME, ALIAS)
    assert decision.version == 1 and "version 3 was deleted" in decision.message
    assert holder(store) == 1
    promote(store, 4)  # then a rollback goes back to 1 again, not to the deleted 3
    assert rollback(store.client(), NAME, ALIAS).version == 1


def test_rollback_without_history_is_a_clear_error(store: Store) -> None:
    with pytest.raises(ModelRegistryError, match="no previous holder"):
        rollback(store.client(), NAME, ALIAS)
    with pytest.raises(ModelRegistryError, match="no registered model 'nope'"):
        rollback(store.client(), "nope", ALIAS)


def _garble(store: Store) -> None:
    client = store.client()
    client.set_registered_model_tag(NAME, f"{HISTORY_TAG_PREFIX}1-zzzz", "{not json")
    client.set_registered_model_tag(NAME, f"{HISTORY_TAG_PREFIX}2-abcd", '{"action": "promote"}')
    naive = {"time": "2024-01-01T00:00:00", "user": "x", "action": "promote", "alias": ALIAS}
    client.set_registered_model_tag(NAME, f"{HISTORY_TAG_PREFIX}3-abcd", json.dumps(naive))


def test_history_shows_each_decision(store: Store) -> None:
    promote(store, 1, user="alice")
    with pytest.raises(PromotionRefusedError):
        promote(store, 2, user="alice")
    promote(store, 2, force=True, reason="demo day", user="alice")
    rollback(store.client(), NAME, ALIAS, reason="undo", user="alice")
    _garble(store)
    shown = store.cli("registry", "history", NAME)
    assert shown.returncode == 0, shown.stderr
    for text in ("alice", "promote", "refuse", "force", "rollback", "- → 1", "1 → 2", "2 → 1"):
        assert text in shown.stdout, shown.stdout
    for text in ("0.7000 vs 0.8000", "tolerance 0.01", "demo day", "undo", "@production"):
        assert text in shown.stdout, shown.stdout
    assert "Traceback" not in shown.stderr and "ignoring history tag" in shown.stderr
    listed = store.cli("registry", "history", NAME, "--alias", ALIAS, "--json")
    assert listed.returncode == 0, listed.stderr
    events = json.loads(listed.stdout)
    assert [(e["action"], e["from"], e["to"]) for e in events] == [
        ("promote", None, 1),
        ("refuse", 1, 2),
        ("force", 1, 2),
        ("rollback", 2, 1),
    ]
    assert [e["reason"] for e in events] == [None, None, "demo day", "undo"]
    assert all(e["user"] == "alice" and e["time"].endswith("+00:00") for e in events)
    assert events[1]["metric"] == "accuracy"
    assert (events[1]["candidate"], events[1]["holder"]) == (0.70, 0.80)
    assert events == sorted(events, key=lambda e: e["time"])


def test_history_ignores_garbled_tags_with_a_warning(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    promote(store, 1)
    _garble(store)
    with caplog.at_level(logging.WARNING, logger="clip_har.registry.history"):
        events = history(store.client(), NAME)
    assert [(e.action, e.to_version) for e in events] == [("promote", 1)]
    assert caplog.text.count("ignoring history tag") == 3
    promote(store, 4)  # recording still works next to them
    assert [e.to_version for e in history(store.client(), NAME, ALIAS)] == [1, 4]


def test_a_long_reason_is_cut_to_fit_the_store(store: Store) -> None:
    promote(store, 1)
    promote(store, 2, force=True, reason="\x01" * 100_000)  # each escapes to 6 characters
    event = history(store.client(), NAME, ALIAS)[-1]
    assert event.reason is not None and event.reason.endswith(TRUNCATED)
    assert 100 < len(event.reason) <= MAX_REASON_CHARS
    stored = store.client().get_registered_model(NAME).tags[event.tag]
    assert len(stored) <= MAX_EVENT_CHARS

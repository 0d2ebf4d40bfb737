"""``clip-har hub export | push | pull`` (issue 14, acceptance 6): the export is the same
bundle with a model card holding a real evaluation's metrics, a fine-tuned encoder becomes
loadable transformers weights, push fails fast offline or without a token, and push then
pull round-trips through a local fake of the Hub API (tests/hub_fake.py)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import free_port, make_photo, run_cli
from hub_fake import FakeHub, serve
from typer.testing import CliRunner, Result

from clip_har.cli.common import EXIT_FAILURE
from clip_har.cli.main import app
from clip_har.inference.predictor import Predictor
from clip_har.models.backbone import load_backbone
from clip_har.models.bundle import EncoderDelta, open_bundle, save_bundle
from clip_har.models.classifier import build_zero_shot_classifier
from clip_har.models.prompts import load_prompt_set

pytestmark = pytest.mark.integration

runner = CliRunner(env={"COLUMNS": "400", "NO_COLOR": "1"})
CLASSES = ("running", "sitting")  # two of the tiny bundle's classes


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def probabilities(bundle: Path, photos: list[Path]) -> np.ndarray:
    predictor = Predictor.from_bundle(bundle)
    rows = []
    for result in predictor.predict_files(photos):
        assert result.prediction is not None, result.error
        rows.append(result.prediction.probabilities)
    return np.stack(rows)


@dataclass(frozen=True)
class World:
    root: Path
    bundle: Path
    photos: list[Path]
    evaluation: Path
    export: Path


@pytest.fixture(scope="module")
def world(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    """A labelled set of generated photos, a real evaluation of the tiny bundle on it, and
    the Hub export of the bundle with that evaluation."""
    root = tmp_path_factory.mktemp("hub")
    photos = []
    for offset, label in enumerate(CLASSES):
        (root / "photos" / label).mkdir(parents=True)
        for index in range(4):
            photos.append(
                make_photo(root / "photos" / label / f"{index}.jpg", seed=index + 10 * offset)
            )
    imported = invoke("data", "import", root / "photos", "-o", root / "manifest")
    assert imported.exit_code == 0, imported.output
    evaluated = invoke(
        "evaluate", "-b", tiny_bundle, "-d", root / "manifest", "-o", root / "evaluation",
        "--split", "all", "--tracking", "none", "--bootstrap", "50",
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    exported = invoke(
        "hub", "export", tiny_bundle, root / "export", "--evaluation", root / "evaluation",
        "--dataset", "har-sample", "--license", "mit",
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output
    return World(root, tiny_bundle, photos, root / "evaluation", root / "export")


def test_hub_export_is_the_same_bundle_with_identical_predictions(world: World) -> None:
    exported = open_bundle(world.export)
    assert exported.manifest == open_bundle(world.bundle).manifest
    bundle_files = files_of(world.bundle)
    assert {k: v for k, v in files_of(world.export).items() if k in bundle_files} == bundle_files
    assert np.array_equal(
        probabilities(world.export, world.photos), probabilities(world.bundle, world.photos)
    )


def test_the_card_parses_and_holds_the_real_evaluation_in_model_index(world: World) -> None:
    import json

    from huggingface_hub import ModelCard

    card = ModelCard.load(world.export / "README.md")
    metrics = json.loads((world.evaluation / "metrics.json").read_text())
    results = {(r.metric_type, r.metric_config): r for r in card.data.eval_results}
    assert results[("accuracy", None)].metric_value == metrics["accuracy"]
    assert results[("f1", "macro")].metric_value == metrics["f1_macro"]
    assert all(
        r.dataset_type == "har-sample" and r.dataset_split == "all" for r in results.values()
    )
    index = card.data.to_dict()["model-index"]
    assert index[0]["name"] == open_bundle(world.bundle).manifest.name
    assert card.data.license == "mit" and card.data.datasets == ["har-sample"]
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert card.data.base_model is None  # a preset, not a Hub model
    assert "random-weights" in card.data.tags and "RANDOM WEIGHTS" in card.text
    for section in ("## Classes", "## Prompts", "## Intended use", "## Limitations",
                    "## Licence", "## Dataset", "## Lineage", "@software{clip_har"):  # fmt: skip
        assert section in card.text, section
    assert all(f"`{name}`" in card.text for name in open_bundle(world.bundle).class_names)


def test_a_fine_tuned_encoder_exports_loadable_transformers_weights(
    tiny_backbone: Any, world: World
) -> None:
    """Without --evaluation the card uses the bundle's validation metrics and says so."""
    from huggingface_hub import ModelCard
    from transformers import CLIPModel

    prompts = load_prompt_set("minimal")
    classifier = build_zero_shot_classifier(tiny_backbone, list(CLASSES), prompts)
    generator = torch.Generator().manual_seed(0)
    tuned = {
        name: tensor + 0.01 * torch.randn(tensor.shape, generator=generator)
        for name, tensor in tiny_backbone.model.state_dict().items()
        if name.startswith("vision_model.encoder.layers.1.")
    }
    bundle = world.root / "tuned"
    save_bundle(
        bundle, classifier=classifier, backbone=tiny_backbone, prompts=prompts,
        encoder=EncoderDelta("partial", tuned), metrics={"val_accuracy": 0.625},
    )  # fmt: skip
    out = world.root / "tuned-export"
    exported = invoke("hub", "export", bundle, out)
    assert exported.exit_code == 0, exported.output
    assert "no test-set evaluation" in exported.stderr

    model = CLIPModel.from_pretrained(out, subfolder="transformers")
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in tuned.items())
    reloaded = load_backbone(str(out / "transformers"))  # processor + tokenizer files too
    assert reloaded.random_weights  # the preset marker travels: still flagged
    pixels = torch.rand(2, 3, *tiny_backbone.image_config.output_size, generator=generator)
    expected = open_bundle(bundle).load_image_encoder(tiny_backbone)(pixels)
    assert torch.allclose(reloaded.encode_image(pixels), expected, atol=1e-6)

    card = ModelCard.load(out / "README.md")
    [accuracy] = card.data.eval_results
    assert (accuracy.metric_value, accuracy.dataset_split) == (0.625, "validation")
    assert "no test-set evaluation" in card.text and "subfolder=" in card.text


def test_an_evaluation_of_another_model_is_refused(tiny_backbone: Any, world: World) -> None:
    """Same backbone, strategy and classes, other head weights: the card must not report
    the tiny bundle's evaluation for it."""
    from clip_har.models.prompts import load_class_names

    prompts = load_prompt_set("minimal")  # other prompts: other zero-shot head weights
    classifier = build_zero_shot_classifier(tiny_backbone, load_class_names("har15"), prompts)
    other = world.root / "other-head"
    save_bundle(other, classifier=classifier, backbone=tiny_backbone, prompts=prompts)
    result = invoke("hub", "export", other, world.root / "other-export",
                    "--evaluation", world.evaluation)  # fmt: skip
    assert result.exit_code == EXIT_FAILURE, result.output
    assert "evaluated another model" in result.stderr and "head sha256" in result.stderr
    assert not (world.root / "other-export").exists()


def test_a_damaged_bundle_is_refused_naming_the_file(world: World) -> None:
    damaged = Path(shutil.copytree(world.bundle, world.root / "damaged"))
    head = damaged / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-8:] = b"\x00" * 8
    head.write_bytes(bytes(data))
    result = invoke("hub", "export", damaged, world.root / "never")
    assert result.exit_code == EXIT_FAILURE
    assert str(head) in result.stderr and "refusing to export" in result.stderr
    assert not (world.root / "never").exists()


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake Hub as this process's endpoint, with a token and an empty HF cache."""
    with serve() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.chdir(tmp_path)
        yield hub


def test_push_then_pull_round_trips_the_bundle(
    world: World, fake_hub: FakeHub, tmp_path: Path
) -> None:
    pushed = invoke("hub", "push", world.export, "--repo-id", "team/tiny-har", "-m", "first")
    assert pushed.exit_code == 0, pushed.output
    repo = fake_hub.repos["team/tiny-har"]
    head = repo.branches["main"]
    assert f"{fake_hub.url}/team/tiny-har" in pushed.stdout and head in pushed.stdout
    assert set(fake_hub.tokens) == {"hf_fake_token"}
    assert {k: v for k, v in repo.commits[head].items() if k != ".gitattributes"} == files_of(
        world.export
    )

    pulled = invoke("hub", "pull", "team/tiny-har")  # into ./tiny-har
    assert pulled.exit_code == 0, pulled.output
    assert files_of(tmp_path / "tiny-har") == files_of(world.export)
    assert np.array_equal(
        probabilities(tmp_path / "tiny-har", world.photos),
        probabilities(world.bundle, world.photos),
    )

    again = invoke("hub", "pull", "team/tiny-har")
    assert again.exit_code == EXIT_FAILURE and "--force" in again.stderr
    (tmp_path / "tiny-har" / "stale.txt").write_text("from an earlier pull\n")
    replaced = invoke("hub", "pull", "team/tiny-har", "--force")
    assert replaced.exit_code == 0, replaced.output
    assert files_of(tmp_path / "tiny-har") == files_of(world.export)  # nothing old kept
    branch = invoke("hub", "push", world.export, "--repo-id", "team/tiny-har", "--revision", "dev")
    assert branch.exit_code == 0, branch.output
    on_branch = invoke("hub", "pull", "team/tiny-har", "--revision", "dev", "-o", "dev")
    assert on_branch.exit_code == 0, on_branch.output
    assert files_of(tmp_path / "dev") == files_of(world.export)


def test_pull_names_what_is_wrong(world: World, fake_hub: FakeHub, tmp_path: Path) -> None:
    missing = invoke("hub", "pull", "team/nothing-here", "-o", "x")
    assert missing.exit_code == EXIT_FAILURE and "no such model repository" in missing.stderr
    fake_hub.create("team/not-a-bundle", private=False)
    fake_hub.commit("team/not-a-bundle", "main", [_file("README.md", b"# hello\n")])
    foreign = invoke("hub", "pull", "team/not-a-bundle", "-o", "y")
    assert foreign.exit_code == EXIT_FAILURE and "not a clip-har bundle" in foreign.stderr
    unknown = invoke("hub", "pull", "team/not-a-bundle", "--revision", "nope", "-o", "z")
    assert unknown.exit_code == EXIT_FAILURE and "no revision 'nope'" in unknown.stderr
    assert not any((tmp_path / name).exists() for name in ("x", "y", "z"))


def _file(path: str, content: bytes) -> dict[str, Any]:
    import base64

    return {"key": "file", "value": {"path": path, "content": base64.b64encode(content).decode()}}


def _push_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": "hf_fake_token", **extra}


@pytest.mark.parametrize(
    ("what", "env", "message"),
    [
        (
            "an endpoint nobody answers",
            {"HF_ENDPOINT": "closed"},
            "cannot reach the Hugging Face Hub",
        ),
        ("offline mode", {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        ("no token", {"HF_TOKEN": ""}, "huggingface-cli login"),
    ],
)
def test_push_fails_in_seconds_with_a_clear_message(
    what: str, env: dict[str, str], message: str, world: World, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if env.get("HF_ENDPOINT") == "closed":
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    start = time.monotonic()
    done = run_cli(
        "hub", "push", str(world.export), "--repo-id", "team/tiny-har",
        env=_push_env(tmp_path, **env), timeout=60,
    )  # fmt: skip
    assert time.monotonic() - start < 30, what
    assert done.returncode == EXIT_FAILURE, done.stderr
    assert message in done.stderr and "Traceback" not in done.stdout + done.stderr
    if what == "no token":
        assert "HF_TOKEN" in done.stderr

"""The model card of a Hub export: ``README.md`` built with huggingface_hub's ``ModelCard``.

Its metadata (``ModelCardData``) carries the licence, the base model, the dataset, the
pipeline tag and ``model-index`` eval results from a real ``clip-har evaluate`` run (or,
without one, the validation metrics the bundle recorded, flagged as such). Its text says
what the model does, its classes and prompts, how to use it, its limits, its lineage and
how to cite it. See docs/registry.md#hugging-face-hub.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_har.evaluation.provenance import training_strategy
from clip_har.evaluation.record import EvaluationRecord
from clip_har.models.backbone import backbone_label
from clip_har.models.bundle import Manifest
from clip_har.version import __version__

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

LIBRARY_NAME = "clip-har"
CUSTOM_DATASET = "custom"  # dataset_type of a model-index entry without a Hub dataset id
NO_TEST_SET_WARNING = (
    "This card has no test-set evaluation (at most the validation metrics the bundle recorded "
    "at training time): run `clip-har evaluate` and export with `--evaluation DIR`."
)

# metrics.json key (or bundle metric without its ``val_`` prefix) -> (type, config, name)
_CARD_METRICS: dict[str, tuple[str, str | None, str]] = {
    "accuracy": ("accuracy", None, "Accuracy"),
    "balanced_accuracy": ("accuracy", "balanced", "Balanced accuracy"),
    "f1_macro": ("f1", "macro", "F1 (macro)"),
    "precision_macro": ("precision", "macro", "Precision (macro)"),
    "recall_macro": ("recall", "macro", "Recall (macro)"),
    "f1_weighted": ("f1", "weighted", "F1 (weighted)"),
}


@dataclass(frozen=True)
class CardInputs:
    """What the card says beyond the manifest."""

    license: str
    dataset: str | None = None  # a Hub dataset id or a name
    repo_id: str | None = None  # shown in the usage lines
    evaluation: EvaluationRecord | None = None
    transformers_dir: str | None = None  # the subfolder with transformers weights, if any


def _finite(value: float) -> bool:
    return math.isfinite(value)


def eval_entries(manifest: Manifest, inputs: CardInputs) -> list[Any]:
    """``EvalResult`` entries: the evaluation's metrics on its data and split, else the
    bundle's own ``val_`` metrics on the validation split (empty when it has none)."""
    from huggingface_hub import EvalResult

    dataset_type = inputs.dataset or CUSTOM_DATASET
    evaluation = inputs.evaluation
    if evaluation is not None:
        source = evaluation.source
        split = (source.split or "all") if source is not None else None
        dataset_name = inputs.dataset or (Path(source.data).name if source else "evaluation data")
        metrics = evaluation.metrics
    else:
        split, dataset_name = "validation", inputs.dataset or "validation split"
        metrics = {
            key.removeprefix("val_"): value
            for key, value in manifest.metrics.items()
            if key.startswith("val_")
        }
    task_type = (
        "zero-shot-image-classification"
        if manifest.head.type == "zero_shot"
        else "image-classification"
    )
    return [
        EvalResult(
            task_type=task_type,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=metric_type,
            metric_value=metrics[key],
            metric_config=config,
            metric_name=name,
        )
        for key, (metric_type, config, name) in _CARD_METRICS.items()
        if key in metrics and _finite(metrics[key])
    ]


def card_warnings(manifest: Manifest, inputs: CardInputs) -> list[str]:
    """What a reader of the card must know first (random weights, no test evaluation)."""
    warnings = []
    if manifest.backbone.random_weights:
        warnings.append(
            f"The backbone `{manifest.backbone.spec}` has RANDOM WEIGHTS (a built-in preset): "
            "this model's predictions are meaningless. It exists to try the pipeline."
        )
    if inputs.evaluation is None:
        warnings.append(NO_TEST_SET_WARNING)
    elif inputs.evaluation.source is not None and inputs.evaluation.source.random_weights:
        warnings.append("The evaluation was of a random-weight backbone.")
    return warnings


def build_model_card(manifest: Manifest, inputs: CardInputs) -> ModelCard:
    """The model card of a bundle: metadata plus text (see the module docstring)."""
    from huggingface_hub import ModelCard, ModelCardData

    backbone = manifest.backbone
    zero_shot = manifest.head.type == "zero_shot"
    hub_backbone = not backbone.fingerprint.startswith("sha256:")  # repo@commit: from the Hub
    tags = [
        LIBRARY_NAME,
        "clip",
        "human-action-recognition",
        "image-classification",
        f"head-{manifest.head.type.replace('_', '-')}",
    ]
    if backbone.random_weights:
        tags.append("random-weights")
    results = eval_entries(manifest, inputs)
    data = ModelCardData(
        model_name=manifest.name,
        license=inputs.license,
        library_name=LIBRARY_NAME,
        tags=tags,
        base_model=backbone.spec if hub_backbone else None,
        datasets=[inputs.dataset] if inputs.dataset else None,
        pipeline_tag="zero-shot-image-classification" if zero_shot else "image-classification",
        metrics=sorted({result.metric_type for result in results}) or None,
        eval_results=results or None,
    )
    text = _card_text(manifest, inputs, results)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _card_text(manifest: Manifest, inputs: CardInputs, results: list[Any]) -> str:
    backbone = manifest.backbone
    strategy = training_strategy(manifest)
    label = backbone_label(backbone.spec, backbone.random_weights)
    repo = inputs.repo_id or f"<namespace>/{manifest.name}"
    lines = [f"# {manifest.name}", ""]
    lines += [f"> **Warning:** {warning}\n" for warning in card_warnings(manifest, inputs)]
    lines += [
        f"A human action recognition model made with clip-har: it tells which of "
        f"{len(manifest.class_names)} actions a photo shows. It is a `{manifest.head.type}` "
        f"head ({strategy}) on the image encoder of `{label}`"
        + (
            f", whose image encoder was fine-tuned ({manifest.encoder.method})"
            if manifest.encoder
            else ""
        )
        + ". The repository is a clip-har *bundle*: `manifest.json` says how to rebuild, "
        "serve and trace the model.",
        "",
        "## Classes",
        "",
        ", ".join(f"`{name}`" for name in manifest.class_names),
        "",
        "## Prompts",
        "",
        f"Prompt set `{manifest.prompts.name}`: each class name goes into these templates, "
        "whose text embeddings "
        + ("are the classifier." if manifest.head.type == "zero_shot" else "initialised the head."),
        "",
        *[f"- `{template}`" for template in manifest.prompts.templates],
        "",
        "## Evaluation",
        "",
        *_evaluation_lines(manifest, inputs, results),
        "## How to use",
        "",
        "With clip-har installed:",
        "",
        "```bash",
        f"clip-har hub pull {repo} -o {manifest.name}",
        f"clip-har predict photos/ --bundle {manifest.name}",
        "```",
        "",
    ]
    if inputs.transformers_dir:
        where = f'"{repo}", subfolder="{inputs.transformers_dir}"'
        lines += [
            f"The fine-tuned backbone is also in `{inputs.transformers_dir}/` as plain "
            "`transformers` weights (the classifier head is not part of them):",
            "",
            "```python",
            "from transformers import AutoModel, AutoProcessor",
            f"model = AutoModel.from_pretrained({where})",
            f"processor = AutoProcessor.from_pretrained({where})",
            "```",
            "",
        ]
    lines += [
        "## Intended use",
        "",
        "Recognising everyday human actions (the classes above) in still photos, for "
        "research, prototyping and as a baseline. Check it on your own data before relying "
        "on it; it is not meant for surveillance or for decisions about people.",
        "",
        "## Limitations",
        "",
        *(
            ["- **The weights are random: every prediction is meaningless.**"]
            if backbone.random_weights
            else []
        ),
        "- It only knows its classes: every photo gets one of them, even when none applies.",
        "- CLIP models carry the biases of their web-scale training data; accuracy differs "
        "between groups of people, settings and photo styles.",
        "- Scores are probabilities over these classes, not calibrated confidence that an "
        "action takes place.",
        "",
        "## Licence",
        "",
        f"`{inputs.license}`"
        + (f"; the base model `{backbone.spec}` has its own licence." if backbone.spec else ""),
        "",
        "## Dataset",
        "",
        *_dataset_lines(manifest, inputs),
        "## Lineage",
        "",
        *_lineage_lines(manifest),
        "## Citation",
        "",
        "```bibtex",
        "@inproceedings{radford2021clip,",
        "  title     = {Learning Transferable Visual Models From Natural Language Supervision},",
        "  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya "
        "and Goh, Gabriel and Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and "
        "Mishkin, Pamela and Clark, Jack and Krueger, Gretchen and Sutskever, Ilya},",
        "  booktitle = {Proceedings of the 38th International Conference on Machine Learning},",
        "  year      = {2021},",
        "}",
        "",
        "@software{clip_har,",
        "  title   = {{CLIP HAR}: human action recognition with CLIP},",
        f"  version = {{{manifest.lineage.clip_har_version}}},",
        f"  year    = {{{manifest.lineage.created_at.year}}},",
        f"  note    = {{model {manifest.name}"
        + (f", commit {manifest.lineage.git_commit}" if manifest.lineage.git_commit else "")
        + "},",
        "}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _evaluation_lines(manifest: Manifest, inputs: CardInputs, results: list[Any]) -> list[str]:
    if not results:
        return ["No evaluation was recorded for this model.", ""]
    evaluation = inputs.evaluation
    if evaluation is None:
        where = "the validation split, measured during training (no test-set evaluation)"
    elif evaluation.source is None:
        where = "an evaluation that did not record its data"
    else:
        source = evaluation.source
        where = f"`{Path(source.data).name}` ({source.split_label}, format {source.format})"
        if source.data_sha256:
            where += f", manifest sha256 `{source.data_sha256[:12]}…`"
    images = evaluation.images if evaluation is not None else None
    lines = [f"On {where}" + (f", {images} images:" if images else ":"), ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {result.metric_name} | {result.metric_value:.4f} |" for result in results]
    if evaluation is not None and "accuracy_ci_low" in evaluation.metrics:
        low, high = evaluation.metrics["accuracy_ci_low"], evaluation.metrics["accuracy_ci_high"]
        lines += ["", f"Accuracy 95% bootstrap interval: [{low:.4f}, {high:.4f}]."]
    return [*lines, ""]


def _dataset_lines(manifest: Manifest, inputs: CardInputs) -> list[str]:
    parts = []
    if inputs.dataset:
        parts.append(f"Dataset: `{inputs.dataset}`.")
    if manifest.lineage.data_version:
        parts.append(f"Training data version (DVC md5): `{manifest.lineage.data_version}`.")
    if not parts:
        parts.append(
            "Not recorded: a zero-shot model is built from prompts alone."
            if manifest.head.type == "zero_shot" and manifest.encoder is None
            else "Not recorded."
        )
    return [" ".join(parts), ""]


def _lineage_lines(manifest: Manifest) -> list[str]:
    lineage, backbone = manifest.lineage, manifest.backbone
    rows = {
        "created": f"{lineage.created_at:%Y-%m-%d %H:%M:%S %Z}",
        "clip-har": lineage.clip_har_version,
        "git commit": lineage.git_commit,
        "data version": lineage.data_version,
        "training run": lineage.run_id,
        "strategy": training_strategy(manifest),
        "backbone": backbone_label(backbone.spec, backbone.random_weights),
        "backbone fingerprint": backbone.fingerprint,
        "input": f"{manifest.preprocessing.output_size} ({manifest.preprocessing.resample})",
        "exported by": f"clip-har {__version__}",
    }
    table = ["| | |", "|---|---|"]
    table += [f"| {key} | `{value}` |" for key, value in rows.items() if value]
    return [*table, ""]

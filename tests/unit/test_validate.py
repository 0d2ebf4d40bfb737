"""Validation: specific reason codes, modes kept, duplicates reported, sources untouched."""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from clip_har.cli.data_validate import validate_command
from clip_har.data.manifest import conform, read_manifest, write_manifest
from clip_har.data.validate import REASONS, validate

BOMB_SIDE = 30_000


def make_photo(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A smooth random colour image in the format named by the suffix."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)
    return path


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def write_png_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A PNG whose header claims side x side 8-bit grey pixels (900 MB decoded), with only
    a few compressed rows of data: a few hundred bytes on disk, never to be decoded."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * ((side + 1) * 4), 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Class folders of good photos, every kind of bad file, odd modes and a conflict."""
    root = tmp_path / "data"
    for label in ("running", "eating"):
        (root / label).mkdir(parents=True)
    rows: list[tuple[Path, str | None]] = []

    def add(path: Path, label: str | None) -> Path:
        rows.append((path, label))
        return path

    for index in range(3):
        add(make_photo(root / "running" / f"run_{index}.jpg", (96, 72), seed=index), "running")
        add(make_photo(root / "eating" / f"eat_{index}.png", (80, 64), seed=10 + index), "eating")
    good = root / "running" / "run_0.jpg"

    # bad files
    add(root / "running" / "zero.jpg", "running").write_bytes(b"")
    truncated = good.read_bytes()
    add(root / "running" / "truncated.jpg", "running").write_bytes(truncated[: len(truncated) // 2])
    add(root / "running" / "notes.jpg", "running").write_text("this is not an image\n")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(add(root / "eating" / "pixel.png", "eating"))
    write_png_bomb(add(root / "eating" / "bomb.png", "eating"))
    add(root / "running" / "vanished.jpg", "running")  # listed, never created

    # accepted modes
    Image.new("CMYK", (64, 48), (10, 200, 30, 5)).save(add(root / "eating" / "cmyk.jpg", "eating"))
    rgba = np.zeros((50, 70, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, np.linspace(0, 255, 70, dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(add(root / "eating" / "rgba.png", "eating"))
    deep = (np.arange(60 * 40, dtype=np.uint32).reshape(40, 60) * 27).astype(np.uint16)
    Image.fromarray(deep).save(add(root / "running" / "deep16.png", "running"))
    make_photo(root / "x.png", (64, 64), seed=42)
    Image.open(root / "x.png").convert("L").save(add(root / "running" / "grey.png", "running"))
    Image.open(root / "x.png").convert("P").save(add(root / "eating" / "palette.png", "eating"))
    (root / "x.png").unlink()

    # EXIF orientation 6 (rotate 90): stored 80x40, seen as 40x80
    stored = make_photo(root / "tmp.jpg", (80, 40), seed=99)
    exif = Image.open(stored).getexif()
    exif[0x0112] = 6
    Image.open(stored).save(add(root / "running" / "rotated.jpg", "running"), exif=exif)
    stored.unlink()

    # the same bytes under another class: an exact duplicate with conflicting labels
    shutil.copyfile(good, add(root / "eating" / "copied_run_0.jpg", "eating"))

    # label problems on good images
    add(make_photo(root / "eating" / "nolabel.jpg", (64, 64), seed=50), None)
    add(make_photo(root / "eating" / "blank.jpg", (64, 64), seed=51), "   ")
    add(make_photo(root / "eating" / "alien.jpg", (64, 64), seed=52), "juggling")

    frame = conform(
        pd.DataFrame({"path": [str(p) for p, _ in rows], "label": [lab for _, lab in rows]})
    )
    return root, frame


EXPECTED_REJECTIONS = {
    "zero.jpg": "empty_file",
    "truncated.jpg": "corrupt_data",
    "notes.jpg": "not_an_image",
    "pixel.png": "too_small",
    "bomb.png": "too_large",
    "vanished.jpg": "missing_file",
    "nolabel.jpg": "empty_label",
    "blank.jpg": "empty_label",
    "alien.jpg": "unknown_label",
}


def test_every_bad_file_gets_its_reason(messy: tuple[Path, pd.DataFrame]) -> None:
    root, frame = messy
    before = {p: _sha(p) for p in root.rglob("*") if p.is_file()}
    calls: list[tuple[int, int]] = []
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    result = validate(
        frame, classes=["running", "eating"], progress=lambda d, t: calls.append((d, t))
    )

    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 300, "the bomb must be rejected from its header, not decoded"
    rejected = {
        Path(p).name: r for p, r in zip(result.rejected.path, result.rejected.reason, strict=True)
    }
    assert rejected == EXPECTED_REJECTIONS
    assert set(rejected.values()) <= set(REASONS)
    assert all(result.rejected.detail.str.len() > 0)
    bomb_detail = result.rejected.set_index(result.rejected.path.map(lambda p: Path(p).name))
    assert "too large" in bomb_detail.loc["bomb.png", "detail"]
    assert "900.0 megapixels; limit is" in bomb_detail.loc["bomb.png", "detail"]

    # every accepted mode is kept, with fields refreshed from the decode
    clean = result.manifest.set_index(result.manifest.path.map(lambda p: Path(p).name))
    assert len(clean) == len(frame) - len(EXPECTED_REJECTIONS)
    assert clean.loc["cmyk.jpg", "mode"] == "CMYK"
    assert clean.loc["rgba.png", "mode"] == "RGBA"
    assert clean.loc["deep16.png", "mode"].startswith("I")
    assert clean.loc["grey.png", "mode"] == "L"
    assert clean.loc["palette.png", "mode"] == "P"
    assert clean.loc["rotated.jpg", ["width", "height"]].tolist() == [40, 80]
    assert clean.loc["rotated.jpg", "format"] == "JPEG"
    assert clean.loc["rgba.png", "format"] == "PNG"
    assert clean["sha256"].notna().all() and clean["phash"].str.len().eq(16).all()
    assert clean.loc["run_1.jpg", "sha256"] == _sha(root / "running" / "run_1.jpg")

    # duplicates are reported, not rejected; the conflict is flagged
    report = result.report
    assert report["accepted"] == len(clean) and report["rejected"] == len(EXPECTED_REJECTIONS)
    assert report["rejected_by_reason"] == {
        "corrupt_data": 1,
        "empty_file": 1,
        "empty_label": 2,
        "missing_file": 1,
        "not_an_image": 1,
        "too_large": 1,
        "too_small": 1,
        "unknown_label": 1,
    }
    assert report["exact_duplicate_groups"] == 1
    assert report["exact_duplicate_extra_copies"] == 1
    assert "copied_run_0.jpg" in clean.index and "run_0.jpg" in clean.index
    # grey.png and palette.png come from one picture under two labels: a near conflict
    conflict, near = report["label_conflicts"]
    assert conflict["kind"] == "exact"
    assert sorted(Path(p).name for p in conflict["paths"]) == ["copied_run_0.jpg", "run_0.jpg"]
    assert conflict["distinct_labels"] == ["eating", "running"]
    assert near["kind"] == "near"
    assert sorted(Path(p).name for p in near["paths"]) == ["grey.png", "palette.png"]
    assert report["near_duplicate_groups"] >= 1
    assert report["class_counts"]["running"] > 0 and report["imbalance_ratio"] >= 1.0

    assert calls[-1] == (len(frame), len(frame)) and len(calls) == len(frame)
    after = {p: _sha(p) for p in root.rglob("*") if p.is_file()}
    assert after == before, "source files must never change"


def test_unlabelled_manifest_still_validates(messy: tuple[Path, pd.DataFrame]) -> None:
    _, frame = messy
    frame = frame.assign(label=pd.NA)
    result = validate(frame, classes=["running"])
    reasons = set(result.rejected.reason)
    assert not reasons & {"empty_label", "unknown_label"}
    assert "too_large" in reasons
    assert result.report["labelled"] is False
    assert result.report["label_conflicts"] == []
    assert result.report["exact_duplicate_groups"] == 1


def test_limits_are_configurable(messy: tuple[Path, pd.DataFrame]) -> None:
    _, frame = messy
    result = validate(frame, classes=None, min_side=90, max_pixels=10_000)
    reasons = dict(
        zip(result.rejected.path.map(lambda p: Path(p).name), result.rejected.reason, strict=True)
    )
    assert reasons["run_0.jpg"] == "too_small"  # 96x72 < 90 on its short side
    assert reasons["bomb.png"] == "too_large"
    assert "unknown_label" not in reasons.values()  # no class list: any label is fine


def test_cli_writes_every_output(messy: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    # Registered here on a one-command app; the lead registers it as `clip-har data validate`.
    root, frame = messy
    odd = root / "running" / "we<ird>&'name.jpg"
    make_photo(odd, (64, 64), seed=77)
    frame = conform(
        pd.concat([frame, pd.DataFrame({"path": [str(odd)], "label": ["<script>x</script>"]})])
    )
    source = tmp_path / "imported"
    write_manifest(frame, source)
    classes = tmp_path / "classes.txt"
    classes.write_text("running\neating\n")
    app = typer.Typer()
    app.command("validate")(validate_command)
    app.command("noop")(lambda: None)  # keep `validate` a named sub-command

    out = tmp_path / "validated"
    result = CliRunner().invoke(
        app, ["validate", str(source), "-o", str(out), "--classes", str(classes)]
    )
    assert result.exit_code == 0, result.output
    assert "accepted" in result.output

    clean = read_manifest(out)
    assert len(clean) == len(frame) - len(EXPECTED_REJECTIONS) - 1  # + the odd label
    rejected = pd.read_csv(out / "rejected.csv")
    assert list(rejected.columns[:3]) == ["path", "reason", "detail"]
    assert rejected.reason.value_counts()["unknown_label"] == 2
    report = json.loads((out / "data_report.json").read_text())
    for key in (
        "accepted",
        "rejected",
        "rejected_by_reason",
        "exact_duplicate_groups",
        "exact_duplicate_extra_copies",
        "near_duplicate_groups",
        "label_conflicts",
        "class_counts",
        "imbalance_ratio",
        "width_histogram",
        "height_histogram",
        "modes",
        "formats",
    ):
        assert key in report
    page = (out / "data_report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "we&lt;ird&gt;&amp;&#x27;name.jpg" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert page.count("data:image/png;base64,") == 2


def test_real_photos_byte_identical_duplicates(har_sample_dir: Path) -> None:
    labels = pd.read_csv(har_sample_dir / "labels.csv")
    paths = [str(har_sample_dir / "images" / name) for name in labels.filename]
    frame = conform(pd.DataFrame({"path": paths, "label": labels.label}))
    digests = pd.Series([_sha(Path(p)) for p in paths])
    copies = digests.value_counts()
    expected_groups = int((copies > 1).sum())

    result = validate(frame, classes=sorted(set(labels.label)))

    report = result.report
    assert report["rejected"] == 0 and report["accepted"] == len(paths)
    assert report["exact_duplicate_groups"] == expected_groups == 5
    assert report["exact_duplicate_extra_copies"] == int((copies[copies > 1] - 1).sum())
    assert report["modes"] == {"RGB": len(paths)}
    assert (result.manifest.sha256.to_numpy() == digests.to_numpy()).all()
    assert [_sha(Path(p)) for p in paths] == digests.tolist()


def test_data_report_names_its_manifest_and_unlabelled_groups(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    photo = make_photo(tmp_path / "photos" / "a.jpg", (64, 64), seed=1)
    shutil.copyfile(photo, tmp_path / "photos" / "copy_of_a.jpg")
    (tmp_path / "photos" / "notes.jpg").write_text("not an image\n")
    paths = [photo, tmp_path / "photos" / "copy_of_a.jpg", tmp_path / "photos" / "notes.jpg"]
    source = tmp_path / "imported"
    manifest = write_manifest(
        conform(pd.DataFrame({"path": [str(p) for p in paths], "label": [None] * 3})), source
    )
    app = typer.Typer()
    app.command("validate")(validate_command)
    app.command("noop")(lambda: None)
    out = tmp_path / "validated"

    result = CliRunner().invoke(app, ["validate", str(source), "-o", str(out)])

    assert result.exit_code == 0, result.output
    report = json.loads((out / "data_report.json").read_text())
    assert report["manifest"] == {
        "path": str(manifest.absolute()),
        "sha256": _sha(manifest),
        "rows": 3,
    }
    page = (out / "data_report.html").read_text()
    assert _sha(manifest) in page and "imported/<wbr>manifest.parquet" in page
    assert "[None]" not in page and "[<i>unlabelled</i>]" in page  # the exact duplicate group
    assert "<span class='code'>not_an_image</span>" in page
    # the shared table CSS breaks cells anywhere; this report overrides it after it
    assert page.index("td{word-break:normal;overflow-wrap:break-word}") > page.index("break-all")
    assert ".code{white-space:nowrap" in page
    assert '{"min_side"' not in page and "minimum image side (px)" in page

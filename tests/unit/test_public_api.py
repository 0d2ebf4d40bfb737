"""``import clip_har`` gives a Python user what they need, without loading torch up front."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clip_har
from clip_har.errors import ClipHarError
from clip_har.inference.predictor import Predictor


def test_every_public_name_resolves_to_its_definition() -> None:
    assert set(clip_har.__all__) == {"__version__", *clip_har._EXPORTS}
    for name in clip_har.__all__:
        assert getattr(clip_har, name) is not None, name
    assert clip_har.Predictor is Predictor
    assert issubclass(clip_har.BundleError, clip_har.ClipHarError)
    assert issubclass(clip_har.ImageLoadError, ClipHarError)
    assert sorted(dir(clip_har)) == sorted(clip_har.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = clip_har.Nope  # type: ignore[attr-defined]


def test_import_clip_har_does_not_import_torch() -> None:
    code = "import sys, clip_har; clip_har.ImageConfig; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_bundle_predicts_through_the_public_api(tiny_bundle: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)).save(photo)
    bundle = clip_har.open_bundle(tiny_bundle)
    predictor = clip_har.Predictor.from_bundle(tiny_bundle)
    (result,) = list(predictor.predict_files([photo]))
    assert result.prediction is not None
    assert result.prediction.label in bundle.class_names

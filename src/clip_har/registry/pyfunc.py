"""The MLflow pyfunc flavour of a bundle: what ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` run for a registered clip-har version.

Input: one row per image, with a column ``image`` (the image file's bytes, base64) or
``path`` (a file on the serving host, read by the server: any client of ``mlflow models
serve`` can make it read local image files, so expose such a server only to trusted clients),
never both. Output: ``label`` (top-1), ``confidence`` and
``probabilities`` (every class, in the bundle's class order). This module imports MLflow
(the class must subclass ``PythonModel``); nothing imports it unless it needs the flavour.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from clip_har.imaging import ImageLoadError, load_image
from clip_har.registry.store import BUNDLE_ARTIFACT

if TYPE_CHECKING:
    from PIL import Image

    from clip_har.inference.predictor import Predictor

IMAGE_COLUMN = "image"
PATH_COLUMN = "path"
OUTPUT_COLUMNS = ("label", "confidence", "probabilities")
FORMAT_KEY = "format"  # the model_config key naming the engine format


def _bad_input(message: str) -> MlflowException:
    """The error ``mlflow models serve`` answers with HTTP 400 (INVALID_PARAMETER_VALUE)."""
    error: MlflowException = MlflowException.invalid_parameter_value(message)
    return error


def as_frame(model_input: Any) -> pd.DataFrame:
    """``model_input`` as a DataFrame: a DataFrame, a list of row dicts or one row dict."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, Mapping):
        values = dict(model_input)
        if all(isinstance(v, list | tuple) for v in values.values()):
            return pd.DataFrame(values)  # columns of values, as MLflow's `inputs` sends them
        return pd.DataFrame([values])
    if isinstance(model_input, list) and all(isinstance(row, Mapping) for row in model_input):
        return pd.DataFrame(list(model_input))
    raise _bad_input(
        f"expected a table with an '{IMAGE_COLUMN}' (base64 image bytes) or '{PATH_COLUMN}' "
        f"column, one row per image; got {type(model_input).__name__}"
    )


def _given(value: Any) -> bool:
    """Whether a cell holds a value (not None, NaN or an empty string)."""
    if value is None or (isinstance(value, float) and value != value):
        return False
    return not (isinstance(value, str) and not value.strip())


def _row_source(index: int, row: Mapping[str, Any]) -> bytes | str:
    """The image bytes (decoded from base64) or the path a row names."""
    image, path = row.get(IMAGE_COLUMN), row.get(PATH_COLUMN)
    has_image, has_path = _given(image), _given(path)
    if has_image == has_path:
        which = "both" if has_image else "neither"
        raise _bad_input(
            f"row {index}: set exactly one of '{IMAGE_COLUMN}' (base64 image bytes) and "
            f"'{PATH_COLUMN}' (a local file); {which} is set"
        )
    if has_path:
        if not isinstance(path, str):
            raise _bad_input(f"row {index}: '{PATH_COLUMN}' must be a string, not {path!r}")
        return path
    if not isinstance(image, str | bytes):
        raise _bad_input(f"row {index}: '{IMAGE_COLUMN}' must be a base64 string")
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad_input(f"row {index}: '{IMAGE_COLUMN}' is not valid base64 ({exc})") from None


class BundleModel(PythonModel):  # type: ignore[misc]
    """A clip-har bundle behind MLflow's pyfunc interface."""

    def __init__(self) -> None:
        self._predictor: Predictor | None = None

    def load_context(self, context: PythonModelContext) -> None:
        """Open the bundle the model carries, with the engine its ``format`` names."""
        from clip_har.inference.predictor import Predictor

        config = context.model_config or {}
        self._predictor = Predictor.from_bundle(
            context.artifacts[BUNDLE_ARTIFACT], format=str(config.get(FORMAT_KEY, "torch"))
        )

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            raise MlflowException("the clip-har model is not loaded (load_context not called)")
        return self._predictor

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """One output row per input row: top-1 label, its probability, every probability.
        A row that names no usable image fails the whole request, naming the row."""
        predictor = self.predictor
        frame = as_frame(model_input)
        if not {IMAGE_COLUMN, PATH_COLUMN} & set(frame.columns):
            raise _bad_input(
                f"no '{IMAGE_COLUMN}' or '{PATH_COLUMN}' column (got: "
                f"{', '.join(map(str, frame.columns)) or 'none'})"
            )
        options = predictor.options
        images: list[Image.Image] = []
        for index, row in enumerate(frame.to_dict("records")):
            source = _row_source(index, row)
            try:
                images.append(
                    load_image(source, min_side=options.min_side, max_pixels=options.max_pixels)
                )
            except ImageLoadError as exc:
                what = source if isinstance(source, str) else f"'{IMAGE_COLUMN}'"
                raise _bad_input(f"row {index}: {what}: {exc.reason}") from None
        predictions = predictor.predict_images(images) if images else []
        return pd.DataFrame(
            {
                "label": [p.label for p in predictions],
                "confidence": [float(p.score) for p in predictions],
                "probabilities": [[float(x) for x in p.probabilities] for p in predictions],
            },
            columns=list(OUTPUT_COLUMNS),
        )

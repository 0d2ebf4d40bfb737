"""Ground layer: image loading, colour conversion and the one preprocessing implementation.

Imports nothing from clip_har above ``errors``. See docs/preprocessing.md.
"""

from clip_har.errors import ImageLoadError
from clip_har.imaging.colour import to_rgb
from clip_har.imaging.image_config import ImageConfig
from clip_har.imaging.loading import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    IMAGE_EXTENSIONS,
    has_image_name,
    images_under,
    load_image,
)
from clip_har.imaging.preprocess import Preprocessor

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "IMAGE_EXTENSIONS",
    "ImageConfig",
    "ImageLoadError",
    "Preprocessor",
    "has_image_name",
    "images_under",
    "load_image",
    "to_rgb",
]

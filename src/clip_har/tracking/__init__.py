"""Experiment tracking: the ``Tracker`` protocol; MLflow, W&B and fan-out; lineage.

MLflow and W&B are imported only when a run starts, so importing this package is cheap.
See docs/training.md#tracking.
"""

from clip_har.tracking.base import NullTracker, Tracker, flatten
from clip_har.tracking.fanout import BACKENDS, FanOutTracker, create_tracker, parse_backends
from clip_har.tracking.lineage import run_params, run_tags, system_info
from clip_har.tracking.mlflow_backend import MLflowTracker
from clip_har.tracking.wandb_backend import WandbTracker

__all__ = [
    "BACKENDS",
    "FanOutTracker",
    "MLflowTracker",
    "NullTracker",
    "Tracker",
    "WandbTracker",
    "create_tracker",
    "flatten",
    "parse_backends",
    "run_params",
    "run_tags",
    "system_info",
]

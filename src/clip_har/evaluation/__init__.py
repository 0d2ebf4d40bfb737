"""Evaluation: metrics with bootstrap intervals, paired model comparison, plots and reports.

See docs/evaluation.md.
"""

BOOTSTRAP_RESAMPLES = 1000
"""Default bootstrap resamples of every interval and paired comparison (``--bootstrap``)."""
METRICS_FILE = "metrics.json"
"""An evaluation folder's flat scalars and per-class scores: what ``dvc metrics`` reads."""
DETAILS_FILE = "metrics_full.json"
"""Everything an evaluation measured, confusion matrices and reliability included."""
PREDICTIONS_FILE = "predictions.csv"
"""One row per evaluated image."""
MAX_BOOTSTRAP_RESAMPLES = 100_000
"""The most resamples ``--bootstrap`` accepts: work grows with resamples x images."""

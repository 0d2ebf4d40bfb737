"""Evaluation: metrics with bootstrap intervals, paired model comparison, plots and reports.

See docs/evaluation.md.
"""

BOOTSTRAP_RESAMPLES = 1000
"""Default bootstrap resamples of every interval and paired comparison (``--bootstrap``)."""
MAX_BOOTSTRAP_RESAMPLES = 100_000
"""The most resamples ``--bootstrap`` accepts: work grows with resamples x images."""

"""Evaluation: metrics with bootstrap intervals, paired model comparison, plots and reports.

See docs/evaluation.md.
"""

BOOTSTRAP_RESAMPLES = 1000
"""Default bootstrap resamples of every interval and paired comparison (``--bootstrap``)."""

"""Evaluation: metrics with bootstrap intervals, paired model comparison, plots and reports.

See docs/evaluation.md.
"""

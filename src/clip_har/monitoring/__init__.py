"""Drift monitoring: a reference profile of a bundle's predictions on known data, and drift
tests of the service's prediction log against it (class-distribution PSI, a KS test on
confidence, and an embedding domain classifier's ROC AUC).

See docs/deployment.md#drift-monitoring. This module itself imports nothing: the
torch-free server reads the metric names from it.
"""

CLASS_PSI = "class_psi"
"""Population stability index of the predicted-class distribution."""
CONFIDENCE_KS = "confidence_ks"
"""Two-sample Kolmogorov-Smirnov statistic of the top-1 confidence."""
EMBEDDING_AUC = "embedding_auc"
"""Cross-validated ROC AUC of a classifier telling reference images from the window's."""
DRIFT_METRICS = (CLASS_PSI, CONFIDENCE_KS, EMBEDDING_AUC)
"""Every drift score, in report order (the ``metric`` label of ``clip_har_drift_score``)."""

PROFILE_FILE = "profile.json"
"""A reference folder's profile: class counts, confidence histogram, embedding summary."""
EMBEDDINGS_FILE = "arrays.npz"
"""A reference folder's arrays: confidences, the embedding sample, its mean and covariance."""
PROFILE_SCHEMA = 1

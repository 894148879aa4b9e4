"""Binary classification metrics for COVID (positive class 1) vs non-COVID (0)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def binary_metrics(p_covid: np.ndarray, targets: np.ndarray, loss: float, threshold: float = 0.5) -> dict:
    """Loss, accuracy, sensitivity, specificity, ROC AUC, n and the confusion matrix.

    The confusion matrix is ``[[TN, FP], [FN, TP]]`` (rows: truth, columns: prediction).
    Rates that are undefined for the data (no positives, say) are reported as ``None``.
    """
    predicted = (p_covid >= threshold).astype(np.int64)
    targets = targets.astype(np.int64)
    tp = int(((predicted == 1) & (targets == 1)).sum())
    tn = int(((predicted == 0) & (targets == 0)).sum())
    fp = int(((predicted == 1) & (targets == 0)).sum())
    fn = int(((predicted == 0) & (targets == 1)).sum())
    both_classes = 0 < targets.sum() < len(targets)
    return {
        "loss": float(loss),
        "accuracy": (tp + tn) / len(targets),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "roc_auc": float(roc_auc_score(targets, p_covid)) if both_classes else None,
        "n": int(len(targets)),
        "threshold": threshold,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }

"""Classification figures of a real/bogus classifier, from labels and probabilities."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def classification_figures(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Accuracy, log loss, precision, recall, F1 (real = positive class), ROC AUC and the
    confusion-matrix counts.

    Parameters
    ----------
    labels : (N,) int in {0, 1}, 1 = real.
    probabilities : (N, 2) float softmax outputs over (bogus, real).
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape != (len(labels), 2):
        raise ValueError(f"probabilities must have shape ({len(labels)}, 2), "
                         f"got {probabilities.shape}")
    predicted = probabilities.argmax(axis=1)
    (tn, fp), (fn, tp) = skm.confusion_matrix(labels, predicted, labels=[0, 1])
    both_classes = len(np.unique(labels)) == 2
    return {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "loss": float(skm.log_loss(labels, np.clip(probabilities, 1e-7, 1.0), labels=[0, 1])),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(labels, probabilities[:, 1])) if both_classes
        else None,
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }

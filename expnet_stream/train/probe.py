"""The paper's protocol: how well do features separate emotions? A linear classifier, folds by subject.

Chang et al. score expression coefficients by emotion recognition with a linear classifier on them. Here: a
multinomial logistic regression on standardised features, trained on the training folds' faces whose features exist
and scored on every test face. A test face without features (the labeller found no face) counts as a FAILURE, i.e. a
wrong prediction; the accuracy over found faces only is reported too.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

__all__ = ["ProbeResult", "subject_cv_accuracy"]


@dataclass(frozen=True)
class ProbeResult:
    """Accuracy over all faces (missing features = wrong), over found faces, balanced accuracy, counts."""

    accuracy: float
    accuracy_found: float
    balanced_accuracy: float
    n: int
    n_found: int
    folds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def subject_cv_accuracy(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    subjects: npt.ArrayLike,
    *,
    found: npt.ArrayLike | None = None,
    n_folds: int | None = None,
    c: float = 1.0,
    seed: int = 0,
) -> ProbeResult:
    """Subject-independent accuracy of a linear classifier on ``features`` (N, D).

    ``n_folds=None`` is leave-one-subject-out (JAFFE: leave-one-poser-out); otherwise ``GroupKFold(n_folds)``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, np.float64)
    y = np.asarray(labels).astype(str)
    g = np.asarray(subjects).astype(str)
    ok = np.ones(len(y), bool) if found is None else np.asarray(found, bool)
    splitter: Any = LeaveOneGroupOut() if n_folds is None else GroupKFold(n_splits=n_folds)
    pred = np.full(len(y), "", dtype=object)
    n_splits = 0
    for train, test in splitter.split(x, y, g):
        n_splits += 1
        tr = train[ok[train]]
        if len(np.unique(y[tr])) < 2:
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))
        clf.fit(x[tr], y[tr])
        te = test[ok[test]]
        if te.size:
            pred[te] = clf.predict(x[te])
    correct = pred == y
    classes = np.unique(y)
    balanced = float(np.mean([correct[y == k].mean() for k in classes]))
    return ProbeResult(
        accuracy=float(correct.mean()),
        accuracy_found=float(correct[ok].mean()) if ok.any() else 0.0,
        balanced_accuracy=balanced,
        n=len(y),
        n_found=int(ok.sum()),
        folds=n_splits,
    )

"""The label-shift check: can a domain classifier tell the target from the source reweighted by
the estimated w(y)?

Invariant: the weights of the paper rest on P_s(x|y) = P_t(x|y). If that holds, the held-out
labeled source, each image weighted by w(y) = P_t(y) / P_cal(y), has the target's distribution
over whatever the model sees, and no classifier on the model's embeddings beats chance at
telling the two apart: ROC AUC 0.5. An AUC well above 0.5 says the target images look different
from source images of the same classes (the demo's 8x8 digits against MNIST), which class
weights alone cannot fix.

The domain classifier is a logistic regression on the L2-normalised pooled embeddings (the
source classifier's own features), target = 1, source = 0 with sample weights w(y) scaled to the
target's count; its scores are out of fold (stratified K-fold), the AUC is weighted the same way,
and its 95% interval comes from a bootstrap of the scored images (each side resampled on its
own). Per class, the AUC between the target images the model assigns to the class and the
source images of that class names the classes that differ most. This follows the domain-
classifier density-ratio idea of Bickel, Brueckner & Scheffer 2007; using it as a test of the
label-shift assumption on held-out labeled source is datl's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

FOLDS = 5
BOOTSTRAP = 200
MIN_PER_CLASS = 10  # images a side for a class's own AUC
WARN_ABOVE = 0.6  # the interval's lower end above this: the assumption fails as far as the model sees


@dataclass
class ShiftCheck:
    auc: float
    auc_low: float
    auc_high: float
    n_target: int
    n_source: int
    differ_most: list[tuple[str, float]] = field(default_factory=list)  # (class, its own AUC), highest first

    @property
    def fails(self) -> bool:
        return self.auc_low > WARN_ABOVE

    def to_json(self) -> dict:
        return asdict(self)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def weighted_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``y`` (1 = target) with sample weights; ties count a half."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores, sample_weight=weights))


def check_label_shift(
    target: np.ndarray,
    source: np.ndarray,
    source_labels: np.ndarray,
    w_class: np.ndarray,
    target_pred: np.ndarray,
    classes: list[str],
    seed: int = 0,
) -> ShiftCheck:
    """The check (module docstring). ``target``/``source``: embeddings; ``w_class``: w(y) for the
    source images' classes; ``target_pred``: the class the model gives each target image."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = np.vstack([_normalise(target), _normalise(source)])
    nt, ns = len(target), len(source)
    y = np.r_[np.ones(nt, dtype=int), np.zeros(ns, dtype=int)]
    ws = np.asarray(w_class, dtype=np.float64)[source_labels]
    ws = ws * (nt / ws.sum()) if ws.sum() > 0 else np.ones(ns)
    sw = np.r_[np.ones(nt), ws]
    scores = np.zeros(len(y))
    folds = StratifiedKFold(n_splits=min(FOLDS, nt, ns), shuffle=True, random_state=seed)
    for fit, held in folds.split(x, y):
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(x[fit], y[fit], sample_weight=sw[fit])
        scores[held] = clf.decision_function(x[held])
    auc = weighted_auc(y, scores, sw)
    rng = np.random.default_rng([seed, 0x5C])
    reps = []
    for _ in range(BOOTSTRAP):
        i = np.r_[rng.integers(0, nt, nt), nt + rng.integers(0, ns, ns)]
        reps.append(weighted_auc(y[i], scores[i], sw[i]))
    low, high = np.quantile(reps, [0.025, 0.975])
    per_class = []
    for c in range(len(classes)):
        t, s = np.flatnonzero(target_pred == c), nt + np.flatnonzero(source_labels == c)
        if len(t) >= MIN_PER_CLASS and len(s) >= MIN_PER_CLASS:
            i = np.r_[t, s]
            per_class.append((classes[c], weighted_auc(y[i], scores[i], np.ones(len(i)))))
    per_class.sort(key=lambda kv: -kv[1])
    return ShiftCheck(auc, float(min(low, auc)), float(max(high, auc)), nt, ns, per_class[:5])


def warning_line(chk: ShiftCheck) -> str:
    names = ", ".join(f"{c} ({a:.2f})" for c, a in chk.differ_most[:3]) or "none with enough images"
    return (
        f"warning: a domain classifier tells the target from the source reweighted by w(y) apart: ROC AUC "
        f"{chk.auc:.2f} [{chk.auc_low:.2f}, {chk.auc_high:.2f}] (0.5 = not at all), so the target's images "
        f"of a class do not look like the source's, and class weights alone do not match them; the classes "
        f"that differ most: {names}. Try: look at those classes' images (`datl report`); prefer the paper's "
        f"mean, or choose between priors on validation (pipeline.yaml's select), over em/bbse/pacc/em-bcts, "
        f"which rest on that assumption"
    )

"""The estimators of P_t(y) over the SOURCE classes, from a source classifier's logits on
the unlabeled target.

Estimators (``--method``):

- ``mean`` (the paper, Ngiam et al. 2018): P_t(y) = (1/n) sum_i softmax(z_i / T)(y).
  Biased toward the source prior: a classifier's posteriors carry the prior it was
  trained under.
- ``em`` (Saerens, Latinne & Decaestecker 2002, maximum likelihood by EM): starting
  from p = p_s, repeat q_i(y) ∝ softmax(z_i)(y) p(y)/p_s(y);  p(y) = (1/n) sum_i q_i(y).
  Its first step is exactly ``mean`` at T = 1.
- ``bbse`` (Lipton, Wang & Smola 2018, black-box shift estimation): C[i, j] =
  P(ŷ = i, y = j) on held-out labeled source (``--calibration``), mu[i] = P(ŷ = i) on
  the target; solve C w = mu by least squares, clip w at 0, P_t ∝ w * p_cal.
- ``em-bcts`` (Alexandari, Kundaje & Shrikumar 2020): bias-corrected temperature
  scaling, softmax(z / T + b) with T and the per-class b fitted by NLL on
  ``--calibration``, then EM on the calibrated posteriors (with p_s the calibration
  set's label frequencies, the prior those posteriors now carry).
- ``pacc`` (Bella, Ferri, Hernandez-Orallo & Ramirez-Quintana 2010, probabilistic adjusted
  count): M[i, j] = mean over the calibration images of class j of softmax(z)(i), mu[i] =
  mean over the target of softmax(z)(i); solve M p = mu by least squares, clip at 0,
  normalise. bbse's soft-count sibling: posteriors instead of hard predictions.

``auto`` (:func:`choose_method`) chooses among the others without a target label: the
held-out labeled calibration split is cut in two halves per class; on SHIFTS samples drawn
from the second half under Dirichlet priors (the artificial-prevalence protocol of QuaPy,
Moreo et al. 2021, at three strengths), each method estimates the sample's prior with the
first half as its calibration, and the method of lowest mean L1 is used on the target, with
the whole calibration split. The scores are recorded.

Intervals (:func:`bootstrap`): the estimate is recomputed on B Poisson-bootstrap replicates of
the target (each image weighted by an independent Poisson(1) count, the streaming form of
resampling with replacement), from the cached logits, and each class's 2.5% and 97.5%
quantiles over the replicates are its 95% interval. The calibration split is held fixed: the
interval covers the target's sampling noise, not the calibration fit's, nor a bias of the
method (the paper's mean at T = 2 is biased on purpose, and its interval is narrow around
a biased value).

``--temperature T`` smooths the result. For ``mean`` it is the paper's, and its default
(T = 2): each image's logits are divided by T before the softmax. For the other methods,
which need calibrated posteriors and are consistent under label shift, the default is
T = 1 (no flattening: at T = 2 EM's exact answer on a known shift is pulled halfway to
uniform); a T given explicitly applies to the final estimate, P_t ∝ P_t^(1/T), the same
flattening as if log P_t were the logits.

A multi-label source classifier (sigmoid outputs, one yes/no a label; :func:`estimate_multi_label`):

- ``mean``, the paper's rule for label sets: P_t(y) = sum_i s(z_iy / T) / sum_i sum_k s(z_ik / T),
  the per-label mean sigmoid at temperature T, normalised to a distribution over label
  occurrences (what weights and samples of a multi-label source are counted in).
- ``em``: Saerens' EM on each label's binary prior, the labels treated as independent:
  with pi_s(y) the share of source images carrying y, repeat
  q_iy = s_iy r_y / (s_iy r_y + (1 - s_iy)(1 - pi_y)/(1 - pi_s(y))), r_y = pi_y / pi_s(y);
  pi_y = mean_i q_iy; then P_t(y) = pi_y / sum_k pi_k. Independence is a naive baseline:
  Moreo, Francisco & Sebastiani 2023 ("Multi-label quantification") show that methods using
  the labels' dependencies do better; none of those is built here.
- ``bbse`` and ``em-bcts`` are for softmax classifiers and are refused for a sigmoid one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datl.core.errors import UserError

METHODS = ("mean", "em", "bbse", "em-bcts", "pacc", "auto")
PAPER_TEMPERATURE = 2.0  # Ngiam et al.'s smoothing, the default for `mean` only


def default_temperature(method: str) -> float:
    """The paper's T = 2 for ``mean``; no flattening (T = 1) for the consistent estimators."""
    return PAPER_TEMPERATURE if method == "mean" else 1.0


NEEDS_CALIBRATION = ("bbse", "em-bcts", "pacc", "auto")


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def to_distribution(p: np.ndarray) -> np.ndarray:
    """``p`` clipped at 0 and scaled to sum to 1 (uniform if nothing is left)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    s = p.sum()
    return p / s if s > 0 else np.full_like(p, 1.0 / len(p))


def smooth(p: np.ndarray, temperature: float) -> np.ndarray:
    """P ∝ P^(1/T): flattens toward uniform for T > 1 (zeros stay zero)."""
    if temperature == 1.0:
        return to_distribution(p)
    with np.errstate(divide="ignore"):
        logp = np.log(to_distribution(p))
    return to_distribution(np.exp((logp - logp.max()) / temperature))


def estimate_mean(
    logits: np.ndarray, temperature: float = 2.0, chunk: int = 65_536, weights: np.ndarray | None = None
) -> np.ndarray:
    """The paper's mean; ``weights``: one a target image (a bootstrap replicate)."""
    total = np.zeros(logits.shape[1])
    for i in range(0, len(logits), chunk):
        s = softmax(logits[i : i + chunk], temperature)
        total += s.sum(axis=0) if weights is None else weights[i : i + chunk] @ s
    return to_distribution(total)


def _weighted_mean(x: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    return x.mean(axis=0) if weights is None else (weights @ x) / max(float(weights.sum()), 1e-300)


@dataclass
class EMResult:
    p: np.ndarray
    iterations: int
    converged: bool
    last_change: float  # L1 change of the last iteration


def run_em(
    probs: np.ndarray,
    p_source: np.ndarray,
    max_iter: int = 1000,
    tol: float = 1e-9,
    steps: int | None = None,
    weights: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> EMResult:
    """Saerens et al. 2002. ``probs``: posteriors under ``p_source`` (rows sum to 1). Stops when
    an iteration changes P_t by less than ``tol`` (L1), or at ``max_iter`` (not converged);
    ``steps`` runs exactly that many iterations. ``weights``: one a target image (a bootstrap
    replicate); ``start``: where EM starts (default p_s; a replicate starts at the estimate)."""
    p_s = to_distribution(p_source)
    ok = p_s > 0
    p, change = (p_s.copy() if start is None else np.asarray(start, dtype=np.float64)), float("inf")
    for i in range(1, (steps or max_iter) + 1):
        ratio = np.where(ok, p / np.where(ok, p_s, 1.0), 0.0)
        q = probs * ratio
        q /= np.clip(q.sum(axis=1, keepdims=True), 1e-300, None)
        new = _weighted_mean(q, weights)
        change = float(np.abs(new - p).sum())
        p = new
        if steps is None and change < tol:
            return EMResult(to_distribution(p), i, True, change)
    return EMResult(to_distribution(p), steps or max_iter, steps is not None, change)


def estimate_em(
    probs: np.ndarray, p_source: np.ndarray, max_iter: int = 1000, tol: float = 1e-9, steps: int | None = None
) -> np.ndarray:
    """Saerens et al. 2002: P_t only (see :func:`run_em`)."""
    return run_em(probs, p_source, max_iter, tol, steps).p


def em_facts(r: EMResult) -> dict:
    return {"em_iterations": r.iterations, "em_converged": r.converged, "em_last_change": r.last_change}


def estimate_bbse(
    target_pred: np.ndarray, cal_pred: np.ndarray, cal_labels: np.ndarray, k: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Lipton et al. 2018 with hard predictions; least squares for a singular C."""
    n = len(cal_labels)
    conf = np.zeros((k, k))
    np.add.at(conf, (cal_pred, cal_labels), 1.0 / n)
    counts = np.bincount(target_pred, weights=weights, minlength=k)
    mu = counts / max(float(counts.sum()), 1e-300)
    w, *_ = np.linalg.lstsq(conf, mu, rcond=None)
    w = np.clip(w, 0.0, None)
    p_cal = conf.sum(axis=0)
    return to_distribution(w * p_cal)


def pacc_matrix(cal_probs: np.ndarray, cal_labels: np.ndarray, k: int) -> np.ndarray:
    """M[i, j] = mean softmax(z)(i) over the calibration images of class j (a column of zeros
    for a class the calibration split lacks)."""
    m = np.zeros((k, k))
    np.add.at(m.T, cal_labels, cal_probs)
    n = np.bincount(cal_labels, minlength=k)
    return np.divide(m, n[None, :], out=np.zeros_like(m), where=n[None, :] > 0)


def estimate_pacc(target_probs: np.ndarray, m: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Bella et al. 2010: solve M p = mu (mu: the target's mean posterior) by least squares,
    clip at 0, normalise. ``m``: :func:`pacc_matrix`."""
    p, *_ = np.linalg.lstsq(m, _weighted_mean(target_probs, weights), rcond=None)
    return to_distribution(p)


def fit_bcts(logits: np.ndarray, labels: np.ndarray, iters: int = 200) -> tuple[float, np.ndarray]:
    """Bias-corrected temperature scaling: (T, b) minimising NLL of softmax(z / T + b)."""
    import torch  # only here: the CLI and the other estimators start without torch

    z = torch.tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_inv_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_inv_t, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * log_inv_t.exp() + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(1.0 / log_inv_t.exp().item()), b.detach().numpy()


def apply_bcts(logits: np.ndarray, t: float, b: np.ndarray) -> np.ndarray:
    return softmax(np.asarray(logits, dtype=np.float64) / t + b)


MULTI_LABEL_METHODS = ("mean", "em")
SHIFTS = 30  # --method auto: simulated shifts
STRENGTHS = (0.5, 2.0, 8.0)  # their Dirichlet concentrations (per class), in turn


def choose_method(
    cal_logits: np.ndarray, cal_labels: np.ndarray, p_source: np.ndarray | None, seed: int = 0
) -> tuple[str, dict[str, float]]:
    """``--method auto``: (the method of lowest mean L1 over simulated shifts of the held-out
    calibration split, {method: mean L1}) (the module docstring's protocol)."""
    rng = np.random.default_rng([seed, 0xA070])
    k = cal_logits.shape[1]
    fit = np.zeros(len(cal_labels), dtype=bool)
    for c in np.unique(cal_labels):
        idx = rng.permutation(np.flatnonzero(cal_labels == c))
        fit[idx[: (len(idx) + 1) // 2]] = True
    zf, yf, ze, ye = cal_logits[fit], cal_labels[fit], cal_logits[~fit], cal_labels[~fit]
    if len(ye) < 2 * k or len(np.unique(ye)) < 2:
        raise UserError(
            "--method auto",
            f"needs a calibration split of two images a class or more to simulate shifts on "
            f"(it has {len(cal_labels):,})",
            "pass a larger --calibration split, or name the method",
        )
    t, b = fit_bcts(zf, yf)
    p_fit = np.bincount(yf, minlength=k) / len(yf)
    m = pacc_matrix(softmax(zf), yf, k)
    methods = {
        "mean": lambda z: estimate_mean(z, PAPER_TEMPERATURE),
        "bbse": lambda z: estimate_bbse(z.argmax(1), zf.argmax(1), yf, k),
        "pacc": lambda z: estimate_pacc(softmax(z), m),
        "em-bcts": lambda z: run_em(apply_bcts(z, t, b), p_fit, max_iter=300, tol=1e-7).p,
    }
    if p_source is not None:
        methods["em"] = lambda z: run_em(softmax(z), p_source, max_iter=300, tol=1e-7).p
    present = np.unique(ye)
    by_class = {c: np.flatnonzero(ye == c) for c in present}
    scores: dict[str, list[float]] = {name: [] for name in methods}
    for s in range(SHIFTS):
        prior = np.zeros(k)
        prior[present] = rng.dirichlet(np.full(len(present), STRENGTHS[s % len(STRENGTHS)]))
        counts = rng.multinomial(len(ye), prior)
        rows = np.concatenate([rng.choice(by_class[c], size=counts[c]) for c in present if counts[c]])
        truth = counts / counts.sum()
        for name, fn in methods.items():
            scores[name].append(float(np.abs(fn(ze[rows]) - truth).sum()))
    mean_l1 = {name: float(np.mean(v)) for name, v in scores.items()}
    return min(mean_l1, key=mean_l1.get), mean_l1


def sigmoid(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64) / temperature))


def run_binary_em(
    probs: np.ndarray,
    pi_source: np.ndarray,
    max_iter: int = 1000,
    tol: float = 1e-9,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, EMResult]:
    """Saerens' EM on every label's binary prior at once (labels independent). ``probs``:
    (n, k) sigmoid posteriors under ``pi_source`` (the share of source images carrying each
    label). Returns the target's per-label image shares, and the run's facts."""
    ps = np.clip(np.asarray(pi_source, dtype=np.float64), 1e-12, 1 - 1e-12)
    pi, change = ps.copy(), float("inf")
    for i in range(1, max_iter + 1):
        yes = probs * (pi / ps)
        no = (1 - probs) * ((1 - pi) / (1 - ps))
        new = _weighted_mean(yes / np.clip(yes + no, 1e-300, None), weights)
        change = float(np.abs(new - pi).sum())
        pi = new
        if change < tol:
            return pi, EMResult(to_distribution(pi), i, True, change)
    return pi, EMResult(to_distribution(pi), max_iter, False, change)


def estimate_multi_label(
    method: str, target_logits: np.ndarray, pi_source: np.ndarray | None, temperature: float
) -> tuple[np.ndarray, dict]:
    """P_t(y) over label occurrences from a sigmoid classifier's logits (module docstring)."""
    if method not in MULTI_LABEL_METHODS:
        raise UserError(
            f"--method {method}",
            "is for a softmax classifier, and this model is multi-label (sigmoid outputs)",
            f"pass --method {' or '.join(MULTI_LABEL_METHODS)}",
        )
    if method == "mean":
        return to_distribution(sigmoid(target_logits, temperature).sum(axis=0)), {}
    if pi_source is None:
        raise UserError(
            "--method em",
            "needs the source's per-label image shares",
            "pass --source SOURCE.parquet, or a checkpoint that recorded its class prior",
        )
    pi, r = run_binary_em(sigmoid(target_logits), pi_source)
    return smooth(r.p, temperature), {**em_facts(r), "label_image_shares": [round(float(v), 6) for v in pi]}


def estimate(
    method: str,
    target_logits: np.ndarray,
    p_source: np.ndarray | None,
    temperature: float,
    cal_logits: np.ndarray | None = None,
    cal_labels: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """P_t(y) by ``method``; returns (p, facts worth recording: iterations, fitted T, ...)."""
    if method not in METHODS:
        raise UserError("--method", f"unknown method '{method}'", f"pass one of {', '.join(METHODS)}")
    k = target_logits.shape[1]
    if method == "mean":
        return estimate_mean(target_logits, temperature), {}
    if method == "em":
        if p_source is None:
            raise UserError(
                "--method em",
                "needs the source prior",
                "pass --source SOURCE.parquet, or a checkpoint that recorded its class prior",
            )
        r = run_em(softmax(target_logits), p_source)
        return smooth(r.p, temperature), em_facts(r)
    if cal_logits is None or cal_labels is None or len(cal_labels) == 0:
        raise UserError(
            f"--method {method}",
            "needs held-out labeled source images",
            "pass --calibration HELDOUT_SOURCE.parquet (labeled with the source classes)",
        )
    if method == "bbse":
        p = estimate_bbse(target_logits.argmax(1), cal_logits.argmax(1), cal_labels, k)
        return smooth(p, temperature), {}
    if method == "pacc":
        p = estimate_pacc(softmax(target_logits), pacc_matrix(softmax(cal_logits), cal_labels, k))
        return smooth(p, temperature), {}
    t, b = fit_bcts(cal_logits, cal_labels)
    p_cal = np.bincount(cal_labels, minlength=k) / len(cal_labels)
    r = run_em(apply_bcts(target_logits, t, b), p_cal)
    return smooth(r.p, temperature), {"bcts_temperature": t, **em_facts(r)}


def multi_label_replicate_fn(method: str, target_logits: np.ndarray, pi_source: np.ndarray | None, temperature: float):
    """A sigmoid classifier's :func:`replicate_fn`: weights -> the estimate on that replicate."""
    if method == "mean":
        s = sigmoid(target_logits, temperature)
        return lambda w: to_distribution(w @ s)
    probs = sigmoid(target_logits)
    return lambda w: smooth(to_distribution(run_binary_em(probs, pi_source, 300, 1e-7, weights=w)[0]), temperature)


def replicate_fn(
    method: str,
    target_logits: np.ndarray,
    p_source: np.ndarray | None,
    temperature: float,
    cal_logits: np.ndarray | None,
    cal_labels: np.ndarray | None,
    point: np.ndarray,
    facts: dict,
):
    """weights (one a target image) -> the method's estimate on that replicate, with everything
    that does not depend on the target's weights (posteriors, the calibration fit) done once."""
    k = target_logits.shape[1]
    if method == "mean":
        return lambda w: estimate_mean(target_logits, temperature, weights=w)
    if method == "bbse":
        pred, cal_pred = target_logits.argmax(1), cal_logits.argmax(1)
        return lambda w: smooth(estimate_bbse(pred, cal_pred, cal_labels, k, weights=w), temperature)
    if method == "pacc":
        probs, m = softmax(target_logits), pacc_matrix(softmax(cal_logits), cal_labels, k)
        return lambda w: smooth(estimate_pacc(probs, m, weights=w), temperature)
    if method == "em":
        probs, p_s = softmax(target_logits), p_source
    else:  # em-bcts: the calibration fit of the point estimate, reused
        t = facts["bcts_temperature"]
        _, b = fit_bcts(cal_logits, cal_labels)
        probs = apply_bcts(target_logits, t, b)
        p_s = np.bincount(cal_labels, minlength=k) / len(cal_labels)
    # EM from the unsmoothed point estimate: a replicate's answer is near it
    start = to_distribution(point**temperature) if temperature != 1.0 else point
    return lambda w: smooth(run_em(probs, p_s, max_iter=300, tol=1e-7, weights=w, start=start).p, temperature)


def bootstrap(fn, n: int, replicates: int, seed: int) -> np.ndarray:
    """(replicates, k) estimates of ``fn`` on Poisson(1) weights of the n target images; the
    replicate r draws from its own stream (seed, r): deterministic, whatever the count."""
    return np.stack(
        [fn(np.random.default_rng([seed, r]).poisson(1.0, n).astype(np.float64)) for r in range(replicates)]
    )


def interval(reps: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Each class's (low, high) quantiles over the replicates."""
    a = (1 - level) / 2
    return np.quantile(reps, a, axis=0), np.quantile(reps, 1 - a, axis=0)

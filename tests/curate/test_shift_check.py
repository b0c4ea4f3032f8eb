"""The label-shift check: near chance on a pure label shift, far above it when the target's
images of a class look different (the same classes drawn in two styles, the target in one)."""

from __future__ import annotations

import numpy as np

from datl.curate.estimate.shift_check import check_label_shift, warning_line

K, D = 4, 8


def world(style_shift: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 2.0, (K, D))
    style = rng.normal(0, 1.5, D)  # style B moves every image of every class the same way
    p_cal, p_t = np.full(K, 0.25), np.array([0.1, 0.2, 0.3, 0.4])
    ys = np.repeat(np.arange(K), 400)
    xs = mu[ys] + rng.normal(size=(len(ys), D)) + (rng.random(len(ys)) < 0.5)[:, None] * style * style_shift
    yt = rng.choice(K, 1600, p=p_t)
    xt = mu[yt] + rng.normal(size=(len(yt), D))  # the target in style A only
    if not style_shift:  # a pure label shift: both sides in style A
        xs = mu[ys] + rng.normal(size=(len(ys), D))
    return xt, yt, xs, ys, p_t / p_cal


def test_a_pure_label_shift_is_near_chance():
    xt, yt, xs, ys, w = world(style_shift=False)
    chk = check_label_shift(xt, xs, ys, w, yt, list("abcd"))
    assert chk.auc_low < 0.5 < chk.auc_high and not chk.fails, chk
    # unweighted, the class mix alone gives the two sides away a little
    assert check_label_shift(xt, xs, ys, np.ones(K), yt, list("abcd")).auc > chk.auc


def test_two_styles_the_target_in_one_are_told_apart():
    xt, yt, xs, ys, w = world(style_shift=True)
    chk = check_label_shift(xt, xs, ys, w, yt, list("abcd"))
    # half the source is style B: told apart at best perfectly, the other half not at all, so the
    # AUC's ceiling is 0.75 (measured: 0.704 [0.687, 0.726])
    assert chk.auc > 0.65 and chk.fails, chk
    assert len(chk.differ_most) == 4 and all(a > 0.6 for _, a in chk.differ_most)
    line = warning_line(chk)
    assert line.startswith("warning:") and f"{chk.auc:.2f}" in line and chk.differ_most[0][0] in line
    assert check_label_shift(xt, xs, ys, w, yt, list("abcd")) == chk  # the seed decides

"""Sampling: class counts, uniformity, no repeats, inclusion frequencies, seeds, exclusion.

Statistical checks use fixed seeds, so they are deterministic; each threshold is one a
correct sampler passes with probability > 0.999 (chi-square p > 0.001).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from datl.core.errors import UserError
from datl.curate.sample import plan_with_replacement, plan_without_replacement, run_sample
from datl.manifests import Manifest, ManifestMeta, write_manifest, write_table


def source(tmp_path, sizes=(300, 200, 100, 50)):
    labels = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
    n = len(labels)
    t = pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "path": [f"x/{i}.png" for i in range(n)],
            "label": labels,
            "extra": np.arange(n),
        }
    )
    return Manifest(write_manifest(tmp_path / "src.parquet", t, ManifestMeta(classes=list("abcd"[: len(sizes)]))))


def weights_table(p_target, n_source):
    p_source = np.asarray(n_source) / np.sum(n_source)
    return pa.table(
        {
            "label": np.arange(len(p_target), dtype=np.int32),
            "p_target": np.asarray(p_target, float),
            "weight": np.asarray(p_target) / p_source,
        }
    )


def test_class_counts_follow_the_multinomial(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [300, 200, 100, 50]).astype(np.int32)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    plan = plan_with_replacement(labels, np.ones(len(labels), bool), p, 20_000, rng)
    counts = np.bincount(labels[plan.rows], minlength=4)
    assert counts.sum() == 20_000
    assert stats.chisquare(counts, 20_000 * p).pvalue > 0.001
    # uniform within a class: each of class 3's 50 rows drawn ~ 8,000 / 50 times
    per_row = np.bincount(plan.rows[labels[plan.rows] == 3] - 600, minlength=50)
    assert stats.chisquare(per_row).pvalue > 0.001


def test_mass_of_a_class_with_no_rows_left_is_renormalised(tmp_path):
    labels = np.repeat(np.arange(3), 100).astype(np.int32)
    keep = labels != 2  # every row of class 2 excluded
    plan = plan_with_replacement(labels, keep, np.array([0.25, 0.25, 0.5]), 10_000, np.random.default_rng(1))
    counts = np.bincount(labels[plan.rows], minlength=3)
    assert counts[2] == 0 and stats.chisquare(counts[:2]).pvalue > 0.001


def test_without_replacement_never_repeats_and_first_draw_is_proportional_to_weight():
    labels = np.repeat(np.arange(3), 100).astype(np.int32)
    weight = np.array([1.0, 2.0, 4.0])
    keep = np.ones(300, bool)
    plan = plan_without_replacement(labels, keep, weight, 250, np.random.default_rng(0), "src")
    assert len(np.unique(plan.rows)) == 250
    # a single draw picks row i with probability w_i / sum(w): exact for Efraimidis-Spirakis
    hits = np.zeros(3)
    for s in range(6000):
        r = plan_without_replacement(labels, keep, weight, 1, np.random.default_rng(s), "src").rows[0]
        hits[labels[r]] += 1
    assert stats.chisquare(hits, 6000 * weight / weight.sum()).pvalue > 0.001
    # small samples: inclusion frequency per row follows the weights (ratio 1:2:4 within 15%)
    incl = np.zeros(300)
    for s in range(400):
        incl[plan_without_replacement(labels, keep, weight, 10, np.random.default_rng(s), "src").rows] += 1
    per_class = incl.reshape(3, 100).mean(1)
    assert per_class[1] / per_class[0] == pytest.approx(2, rel=0.15)
    assert per_class[2] / per_class[0] == pytest.approx(4, rel=0.15)


def test_size_above_eligible_names_the_max():
    labels = np.repeat(np.arange(2), 10).astype(np.int32)
    with pytest.raises(UserError, match="more than the 10 eligible.*--size 10 or less"):
        plan_without_replacement(labels, np.ones(20, bool), np.array([1.0, 0.0]), 11, np.random.default_rng(0), "s")


def _write_sample(src, wt, tmp_path, name, **kw):
    kw = {"size": 500, "replacement": True, "exclude": None, "seed": 0, **kw}
    plan, batches, schema = run_sample(src, src.classes, wt, **kw)
    write_manifest(
        tmp_path / name,
        batches,
        ManifestMeta(classes=src.classes, stage="sample", params={"replacement": kw["replacement"]}),
        schema=schema,
    )
    return pq.read_table(tmp_path / name)


def test_output_rows_seeds_and_exclusion(tmp_path):
    src = source(tmp_path)
    wt = weights_table([0.4, 0.3, 0.2, 0.1], [300, 200, 100, 50])
    a = _write_sample(src, wt, tmp_path, "a.parquet")
    b = _write_sample(src, wt, tmp_path, "b.parquet")
    c = _write_sample(src, wt, tmp_path, "c.parquet", seed=1)
    assert a.equals(b) and not a.equals(c)
    assert a.num_rows == 500 and a.column("draw").to_pylist() == list(range(500))
    # carried columns are the source row's own
    ids = np.array([int(i[1:]) for i in a.column("id").to_pylist()])
    assert (a.column("extra").to_numpy() == ids).all()
    assert np.allclose(a.column("weight").to_numpy(), wt.column("weight").to_numpy()[a.column("label").to_numpy()])
    excl = pa.array([f"r{i}" for i in range(0, 650, 2)])
    e = _write_sample(src, wt, tmp_path, "e.parquet", exclude=excl, replacement=False, size=300)
    assert not set(e.column("id").to_pylist()) & set(excl.to_pylist())
    assert len(set(e.column("id").to_pylist())) == 300
    with pytest.raises(UserError, match="--size"):
        run_sample(src, src.classes, wt, 0, True, None, 0)


def test_prior_table_is_not_a_manifest_but_has_metadata(tmp_path):
    write_table(
        tmp_path / "p.parquet",
        pa.table({"label": pa.array([0, 1], pa.int32()), "p_target": [0.5, 0.5]}),
        ManifestMeta(classes=["a", "b"], stage="estimate"),
    )
    assert ManifestMeta.from_schema(pq.read_schema(tmp_path / "p.parquet"), "p").classes == ["a", "b"]

"""Weights and samples of a multi-label source: P_s by label occurrence, the expected label
shares of a sample, per-label quotas with replacement, label-set weights without.

Statistical checks use fixed seeds, so they are deterministic; each threshold is one a
correct sampler passes with probability > 0.999.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

from datl.curate.sample import run_sample, uniform_weights
from datl.curate.weight import compute_weights
from datl.manifests import Manifest, ManifestMeta, write_manifest, write_table

from helpers import cli


def multi_source(tmp_path, sets, name="src.parquet", k=3) -> Manifest:
    n = len(sets)
    t = pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "path": [f"x/{i}.png" for i in range(n)],
            "labels": pa.array(sets, pa.list_(pa.int32())),
            "extra": np.arange(n),
        }
    )
    return Manifest(write_manifest(tmp_path / name, t, ManifestMeta(classes=list("abcdefgh"[:k]))))


def random_sets(n: int, k: int, seed: int) -> list[list[int]]:
    """Label sets with a skewed label frequency and co-occurrence (label 0 often with 1)."""
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n):
        first = int(rng.choice(k, p=np.linspace(2, 1, k) / np.linspace(2, 1, k).sum()))
        s = {first}
        if first == 0 and rng.random() < 0.6:
            s.add(1)
        if rng.random() < 0.2:
            s.add(int(rng.integers(k)))
        sets.append(sorted(s) if rng.random() > 0.03 else [])
    return sets


def test_weights_count_occurrences_and_expect_the_co_occurring_labels(tmp_path):
    # A{a}, B{a,b}, C{b}, D{c}; drawing label a picks A or B, and B brings b along
    src = multi_source(tmp_path, [[0], [0, 1], [1], [2]])
    res = compute_weights(src, ["a", "b", "c"], np.array([1.0, 0.0, 0.0]))
    t = res.table
    assert t.column("n_source").to_pylist() == [2, 2, 1]
    assert np.allclose(t.column("p_source").to_numpy(), [0.4, 0.4, 0.2])
    assert np.allclose(t.column("weight").to_numpy(), [2.5, 0.0, 0.0])
    # per draw: one occurrence of a, and b with chance 1/2 -> shares 2/3, 1/3
    assert np.allclose(t.column("p_expected").to_numpy(), [2 / 3, 1 / 3, 0.0])


def _sample(src, wt, **kw):
    kw = {"size": 20_000, "replacement": True, "exclude": None, "seed": 0, **kw}
    plan, batches, schema = run_sample(src, src.classes, wt, **kw)
    return plan, pa.Table.from_batches(list(batches), schema=schema)


def test_with_replacement_per_label_quotas_follow_n_times_p_t(tmp_path):
    k = 5
    src = multi_source(tmp_path, random_sets(3000, k, 0), k=k)
    p_t = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
    wt = compute_weights(src, src.classes, p_t).table
    plan, t = _sample(src, wt)
    dl = t.column("draw_label").to_numpy()
    sets = t.column("labels").to_pylist()
    assert all(int(d) in s for d, s in zip(dl, sets))  # a row is drawn by one of its own labels
    counts = np.bincount(dl, minlength=k)
    assert stats.chisquare(counts, 20_000 * p_t).pvalue > 0.001
    # within a label, every image carrying it equally likely (label 0's images)
    carriers = [i for i, s in enumerate(pq.read_table(src.path).column("labels").to_pylist()) if 0 in s]
    ids = np.array([int(x[1:]) for x, d in zip(t.column("id").to_pylist(), dl) if d == 0])
    hits = np.array([np.sum(ids == i) for i in carriers])
    assert stats.chisquare(hits).pvalue > 0.001
    # the label shares reached are P_t plus what comes along: p_expected, not P_t
    occ = np.bincount([v for s in sets for v in s], minlength=k)
    got = occ / occ.sum()
    expected = wt.column("p_expected").to_numpy()
    assert np.abs(got - expected).max() < 0.01 < np.abs(expected - p_t).max()
    assert np.allclose(t.column("weight").to_numpy(), [wt.column("weight").to_numpy()[s].sum() for s in sets])
    assert t.column("draw").to_pylist() == list(range(20_000)) and plan.rows.tolist() == sorted(plan.rows.tolist())


def test_without_replacement_images_by_the_sum_of_their_label_weights(tmp_path):
    sets = [[0], [0, 1], [1], [2], [], [1, 2]]
    src = multi_source(tmp_path, sets)
    wt = pa.table({"label": np.arange(3, dtype=np.int32), "p_target": [0.2, 0.3, 0.5], "weight": [1.0, 2.0, 4.0]})
    w_img = np.array([1.0, 3.0, 2.0, 4.0, 0.0, 6.0])
    first = np.zeros(len(sets))
    for s in range(4000):
        plan, _ = _sample(src, wt, size=1, replacement=False, seed=s)
        first[plan.rows[0]] += 1
    assert first[4] == 0  # an image with no label is never drawn
    assert stats.chisquare(first[w_img > 0], 4000 * w_img[w_img > 0] / w_img.sum()).pvalue > 0.001
    plan, t = _sample(src, wt, size=5, replacement=False)
    assert sorted(plan.rows.tolist()) == [0, 1, 2, 3, 5] and t.column("draw_label").null_count == 5


def test_uniform_draws_images_not_labels(tmp_path):
    sets = [[0, 1, 2], [0], [1], []]
    src = multi_source(tmp_path, sets)
    plan, t = _sample(src, uniform_weights(src), size=30_000, uniform=True)
    counts = np.bincount(plan.rows, minlength=4)
    assert counts[3] == 0 and stats.chisquare(counts[:3]).pvalue > 0.001
    assert t.column("draw_label").null_count == 30_000 and set(t.column("weight").to_pylist()) == {1.0}


def test_cli_weight_and_sample_a_multi_label_source(tmp_path):
    src = multi_source(tmp_path, random_sets(600, 3, 1))
    prior = tmp_path / "prior.parquet"
    write_table(
        prior,
        pa.table(
            {"label": pa.array([0, 1, 2], pa.int32()), "class_name": ["a", "b", "c"], "p_target": [0.6, 0.1, 0.3]}
        ),
        ManifestMeta(classes=["a", "b", "c"], stage="estimate"),
    )
    dups = tmp_path / "dups.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(0, 600, 3)]}), dups)
    w = tmp_path / "w.parquet"
    res = cli("curate", "weight", "--source", str(src.path), "--prior", str(prior), "--out", str(w), "--no-plot")
    assert res.returncode == 0, res.stderr
    assert "multi-label: a sample is expected to reach P_t within" in res.stdout + res.stderr
    assert "p_expected" in pq.read_table(w).column_names
    for flags in (["--replacement"], ["--no-replacement"]):
        out = tmp_path / f"s{flags[0]}.parquet"
        res = cli("curate", "sample", "--source", str(src.path), "--weights", str(w), "--size", "150", "--out",
                  str(out), "--exclude", str(dups), *flags)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "label shares reached" in res.stdout + res.stderr
        s = Manifest(out)
        assert s.multi_label and s.num_rows == 150 and "draw_label" in s.columns
        assert not {int(i[1:]) % 3 for i in s.read(["id"]).column(0).to_pylist()} & {0}
        assert cli("datl", "manifest", "validate", "--no-files", str(out)).returncode == 0


def test_the_label_subset_baseline_draws_only_the_named_classes(tmp_path):
    """--classes (names, globs, a file, subtrees of --hierarchy) on single- and multi-label sources."""
    import json

    import pytest

    from datl.core.errors import UserError
    from datl.curate.sample import select_classes

    names = ["bird/owl", "bird/hawk", "cat", "dog"]
    assert select_classes("bird/*", None, names).tolist() == [True, True, False, False]
    assert select_classes("cat, dog", None, names).tolist() == [False, False, True, True]
    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps({"animal": ["bird", "mammal"], "bird": ["bird/owl", "bird/hawk"], "mammal": ["dog"]}))
    assert select_classes("bird", str(tree), names).tolist() == [True, True, False, False]
    assert select_classes("mammal,cat", str(tree), names).tolist() == [False, False, True, True]
    listed = tmp_path / "wanted.txt"
    listed.write_text("# the baseline's classes\nanimal\n\ncat\n")
    assert select_classes(str(listed), str(tree), names).all()
    with pytest.raises(UserError, match="'cow', which is neither"):
        listed.write_text("cow\n")
        select_classes(str(listed), None, names)
    with pytest.raises(UserError, match="matches none"):
        select_classes("fish/*", None, names)

    k = 4
    src = multi_source(tmp_path, random_sets(2000, k, 3), k=k)
    allowed = np.array([False, True, False, True])
    for replacement in (True, False):
        _, t = _sample(src, uniform_weights(src), size=300, uniform=True, replacement=replacement, allowed=allowed)
        assert all(set(s) & {1, 3} for s in t.column("labels").to_pylist())
    wt = compute_weights(src, src.classes, np.array([0.4, 0.1, 0.4, 0.1])).table
    _, t = _sample(src, wt, size=3000, allowed=allowed)
    dl = t.column("draw_label").to_numpy()
    assert set(dl.tolist()) == {1, 3} and abs((dl == 1).mean() - 0.5) < 0.05  # P_t renormalised over {1, 3}

    sets = [[i % 3] for i in range(300)]
    single = pa.table({"id": [f"s{i}" for i in range(300)], "path": ["x.png"] * 300,
                       "label": pa.array([s[0] for s in sets], pa.int32())})  # fmt: skip
    write_manifest(tmp_path / "single.parquet", single, ManifestMeta(classes=["a", "b", "c"]))
    out = tmp_path / "sub.parquet"
    res = cli("curate", "sample", "--source", str(tmp_path / "single.parquet"), "--uniform", "--classes", "a,c",
              "--size", "200", "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert set(pq.read_table(out).column("label").to_pylist()) == {0, 2}
    res = cli("curate", "sample", "--source", str(tmp_path / "single.parquet"), "--uniform", "--classes", "z*",
              "--size", "200", "--out", str(tmp_path / "x.parquet"))  # fmt: skip
    assert res.returncode == 2 and "matches none" in res.stderr and not (tmp_path / "x.parquet").exists()

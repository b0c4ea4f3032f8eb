"""curate features: the source described once into a store that curate dedup reads instead
of images. The store gives dedup exactly what the images give it; a store of another source,
model or descriptor version is refused; a killed pass resumes to an identical store; parts
written by separate jobs (--part K/N) make the same store; a part reads back bit for bit."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datl.manifests import Manifest

from helpers import BIN, assert_user_error, cli, tiny_manifest, write_pngs


def features(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("curate", "features", "--source", str(source), "--out", str(out), "--workers", "0", "-q", *extra)


def dedup(demo: Path, out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli(
        "curate",
        "dedup",
        "--source",
        str(demo / "source.parquet"),
        "--target",
        str(demo / "target_unlabeled.parquet"),
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--workers",
        "0",
        "-q",
        *extra,
    )


def parts(store: Path) -> dict[str, object]:
    """Every part's table, without the metadata (which holds when it was written)."""
    return {p.name: pq.read_table(p).replace_schema_metadata(None) for p in sorted(store.glob("part-*.parquet"))}


def drop_chunk_results(cache: Path) -> None:
    """Keep the cached target side, forget the per-chunk results: the next dedup describes
    (or reads) the source again."""
    for d in cache.glob("*.chunks.*"):
        shutil.rmtree(d)


@pytest.mark.slow
def test_the_store_gives_dedup_exactly_what_the_images_give(demo_small, random_model, tmp_path):
    """Feature check on (a model's embeddings) and off: duplicates.parquet from the store is
    identical to the one from the images, chunk for chunk; the store holds what it says."""
    store, cache = tmp_path / "store", tmp_path / "cache"
    res = features(demo_small / "source.parquet", store, "--model", str(random_model), "--chunk-size", "300")
    assert res.returncode == 0, res.stderr
    assert "the store is complete: 5 parts" in res.stdout  # ceil(1,246 / 300)
    loose = ("--threshold", "0.9", "--pixel-threshold", "0.9", "--chunk-size", "300")
    for extra in (("--model", str(random_model), *loose), ("--no-feature", *loose)):
        a = dedup(demo_small, tmp_path / "a.parquet", cache, *extra)
        assert a.returncode == 0, a.stderr
        drop_chunk_results(cache)
        b = dedup(demo_small, tmp_path / "b.parquet", cache, *extra, "--source-features", str(store))
        assert b.returncode == 0, b.stderr
        ta, tb = (pq.read_table(tmp_path / f"{x}.parquet").replace_schema_metadata(None) for x in "ab")
        assert ta.num_rows >= 5 and ta.equals(tb), (ta.num_rows, tb.num_rows)
        drop_chunk_results(cache)

    src = Manifest(demo_small / "source.parquet")
    t = pq.read_table(store / "part-000001.parquet")
    assert t.column("row").to_pylist() == list(range(300, 600))
    assert t.column("id").to_pylist() == src.read_range(300, 600, ["id"]).column("id").to_pylist()
    first = src.resolve(src.read_range(300, 301, ["path"]).column("path")[0].as_py())
    assert t.column("hash")[0].as_py() == hashlib.sha256(Path(first).read_bytes()).digest()[:16]
    emb = np.stack([np.frombuffer(v, np.float16) for v in t.column("embedding").to_pylist()]).astype(np.float32)
    assert emb.shape[1] == json.loads((store / "store.json").read_text())["embedding_dim"]
    assert np.allclose(np.linalg.norm(emb[t.column("embedded").to_numpy(zero_copy_only=False)], axis=1), 1, atol=1e-2)
    assert len(np.frombuffer(t.column("logits")[0].as_py(), np.float16)) == 3  # the model's three classes


def test_a_store_that_does_not_fit_is_refused(demo_small, random_model, tmp_path):
    store = tmp_path / "store"
    assert features(demo_small / "source.parquet", store, "--chunk-size", "500").returncode == 0
    # another source into the same folder
    other = tmp_path / "other.parquet"
    t = pq.read_table(demo_small / "source.parquet").slice(0, 100)
    pq.write_table(t, other)  # the same metadata, other rows (paths absolute: see below)
    assert_user_error(features(other, store, "--chunk-size", "500"), "is a feature store of another source manifest")
    assert_user_error(features(demo_small / "source.parquet", store), "--chunk-size 500, not 65536")
    cache = tmp_path / "cache"
    # a model's embeddings asked of a store without any
    res = dedup(
        demo_small, tmp_path / "d.parquet", cache, "--model", str(random_model), "--source-features", str(store)
    )
    assert_user_error(res, "holds no model embeddings", "--no-feature")
    # a store of another descriptor version
    meta = json.loads((store / "store.json").read_text())
    (store / "store.json").write_text(json.dumps({**meta, "descriptor": "side8-old"}))
    res = dedup(demo_small, tmp_path / "d.parquet", cache, "--no-feature", "--source-features", str(store))
    assert_user_error(res, "another datl version")
    (store / "store.json").write_text(json.dumps(meta))
    # a missing part
    (store / "part-000001.parquet").unlink()
    res = dedup(demo_small, tmp_path / "d.parquet", cache, "--no-feature", "--source-features", str(store))
    assert_user_error(res, "is not complete: 1 of 3 parts are missing (first: part-000001.parquet)")
    assert not (tmp_path / "d.parquet").exists()
    # a part written from images that changed since (images of this test's own: the demo's are shared)
    pngs = write_pngs(tmp_path / "img", 12)
    own = tiny_manifest(tmp_path / "own.parquet", [f"img/{q.name}" for q in pngs], None)
    assert features(own, tmp_path / "own_store", "--chunk-size", "5").returncode == 0
    os.utime(pngs[7], ns=(pngs[7].stat().st_atime_ns, pngs[7].stat().st_mtime_ns + 10**9))
    res = cli(
        *("curate", "dedup", "--source", str(own), "--target", str(demo_small / "target_unlabeled.parquet")),
        *("--out", str(tmp_path / "d.parquet"), "--cache", str(cache), "--no-feature", "--chunk-size", "5", "-q"),
        *("--source-features", str(tmp_path / "own_store")),
    )
    assert_user_error(res, "part-000001.parquet", "image files that have changed since", "rerun `curate features`")
    before = {q.name: q.stat().st_mtime_ns for q in (tmp_path / "own_store").glob("part-*")}
    assert features(own, tmp_path / "own_store", "--chunk-size", "5").returncode == 0
    after = {q.name: q.stat().st_mtime_ns for q in (tmp_path / "own_store").glob("part-*")}
    assert [k for k in sorted(after) if after[k] != before[k]] == ["part-000001.parquet"]  # that part only
    # no store at all; a part number out of range
    res = dedup(demo_small, tmp_path / "d.parquet", cache, "--no-feature", "--source-features", str(tmp_path / "x"))
    assert_user_error(res, "is not a feature store", "curate features")
    assert_user_error(features(demo_small / "source.parquet", store, "--part", "3/3"), "--part", "0 <= K < N")


@pytest.mark.slow
def test_a_killed_pass_resumes_to_an_identical_store(demo_small, tmp_path):
    store = tmp_path / "store"
    argv = [str(BIN / "curate"), "features", "--source", str(demo_small / "source.parquet"), "--out", str(store)]
    argv += ["--chunk-size", "25", "--workers", "0", "-q"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, done = time.time() + 300, []
    while time.time() < deadline and proc.poll() is None:
        done = list(store.glob("part-*.parquet"))
        if len(done) >= 8:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "features finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in store.glob("part-*.parquet")}
    assert 8 <= len(before) < 50
    assert all(pq.read_schema(p) for p in store.glob("part-*.parquet"))  # never a half-written part
    assert features(demo_small / "source.parquet", store, "--chunk-size", "25").returncode == 0
    after = {p.name: p.stat().st_mtime_ns for p in store.glob("part-*.parquet")}
    assert len(after) == 50 and all(after[k] == v for k, v in before.items())  # kept, not recomputed
    whole = tmp_path / "whole"
    assert features(demo_small / "source.parquet", whole, "--chunk-size", "25").returncode == 0
    assert parts(store).keys() == parts(whole).keys()
    assert all(a.equals(parts(whole)[k]) for k, a in parts(store).items())


def test_parts_written_by_separate_jobs_make_the_same_store(demo_small, tmp_path):
    """A job array of three (--part 0/3, 1/3, 2/3), run in another order, gives the store one
    run gives; dedup refuses the store until every part is there, and dedup's own --part
    spreads its source side the same way."""
    src = demo_small / "source.parquet"
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert features(src, whole, "--chunk-size", "100").returncode == 0
    res = features(src, split, "--chunk-size", "100", "--part", "2/3")
    assert res.returncode == 0 and "parts still missing" in res.stdout, res.stdout
    assert sorted(p.name for p in split.glob("part-*")) == [f"part-{c:06d}.parquet" for c in range(8, 13)]
    cache = tmp_path / "cache"
    res = dedup(demo_small, tmp_path / "d.parquet", cache, "--no-feature", "--source-features", str(split))
    assert_user_error(res, "is not complete")
    for k in (0, 1):
        assert features(src, split, "--chunk-size", "100", "--part", f"{k}/3").returncode == 0
    assert parts(split).keys() == parts(whole).keys()
    assert all(a.equals(parts(whole)[k]) for k, a in parts(split).items())

    # dedup's source side in two parts, then a merge: what one run writes
    one = dedup(demo_small, tmp_path / "one.parquet", tmp_path / "c1", "--no-feature", "--chunk-size", "100")
    assert one.returncode == 0, one.stderr
    for k in (1, 0):
        res = dedup(
            demo_small, tmp_path / "two.parquet", cache, "--no-feature", "--chunk-size", "100", "--part", f"{k}/2"
        )
        assert res.returncode == 0, res.stderr
        assert not (tmp_path / "two.parquet").exists()
    assert len(list(cache.glob("source.chunks.*/chunk-*.npz"))) == 13
    res = dedup(demo_small, tmp_path / "two.parquet", cache, "--no-feature", "--chunk-size", "100")
    assert res.returncode == 0, res.stderr
    a, b = (pq.read_table(tmp_path / f"{x}.parquet").replace_schema_metadata(None) for x in ("one", "two"))
    assert a.equals(b)


def test_a_part_reads_back_what_was_written_and_keeps_the_top_logits_of_many_classes(tmp_path):
    """Over 1,024 classes a part keeps each row's 16 best logits and their labels; the
    descriptors, hashes (an unreadable file's included) and embeddings come back bit for bit,
    also across parts and for a range that starts inside one."""
    from datl.curate.features import Binding, Described, Embeddings, FeatureStore
    from datl.curate.features import pixel as px

    rng = np.random.default_rng(0)
    n, dim, classes = 10, 8, 1_100
    binding = Binding(
        source_sha256="x", rows=n, chunk_size=4, descriptor=px.PARAMS, model="m", embedding_dim=dim, classes=classes
    )
    store = FeatureStore.create(tmp_path / "s", binding)
    hashes = np.array([hashlib.sha256(bytes([i])).digest()[:16] for i in range(n)], dtype="S16")
    hashes[3] = b""  # unreadable
    pixel = rng.standard_normal((n, px.DIM)).astype(np.float16)
    content = rng.standard_normal((n, px.CDIM)).astype(np.float16)
    vecs = rng.standard_normal((n, dim)).astype(np.float16)
    logits = rng.standard_normal((n, classes)).astype(np.float32)
    readable = np.arange(n) != 3
    for c in range(binding.chunks):
        lo, hi = binding.chunk(c)
        rows = np.flatnonzero(readable[lo:hi])
        d = Described(
            lo,
            hi,
            px.Content(hashes[lo:hi], pixel[lo:hi], content[lo:hi], readable[lo:hi], np.zeros(hi - lo, bool)),
            Embeddings(rows, vecs[lo:hi][rows]),
            logits[lo:hi][rows],
        )
        store.write(c, d, pa.array([f"i{r}" for r in range(lo, hi)]), "files")
    assert store.missing() == [] and store.part_files(1) == "files"
    back = FeatureStore.open(tmp_path / "s").read(2, 9, embeddings=True)
    assert back.content.hashes.tolist() == hashes[2:9].tolist() and back.content.hashes[1] == b""
    assert np.array_equal(back.content.pixel, pixel[2:9]) and np.array_equal(back.content.content, content[2:9])
    assert back.emb.rows.tolist() == [0, 2, 3, 4, 5, 6] and np.array_equal(back.emb.vecs, vecs[[2, 4, 5, 6, 7, 8]])
    t = pq.read_table(store.part_path(0))
    top = np.frombuffer(t.column("top_labels")[1].as_py(), np.int32)
    assert top.tolist() == np.argsort(-logits[1], kind="stable")[:16].tolist()
    assert np.allclose(
        np.frombuffer(t.column("top_logits")[1].as_py(), np.float16), np.sort(logits[1])[::-1][:16], atol=1e-2
    )

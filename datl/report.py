"""``datl report OUT``: the curation report, one HTML page (OUT/report.html) a user reads
before spending GPU days on a curation.

What it shows, each read from the stage folders a ``datl run`` left in OUT (their
``stamp.json`` says which stage wrote what, from which inputs, in how many seconds):

- weights: every source class of every ``weight`` stage (name, n_source, P_s, P_t, weight,
  images excluded as duplicates), sortable, filterable, paginated in the page (never 20,000
  rows in the DOM at once), with the stage's plot beside it;
- evidence: for the classes of highest weight (``--evidence-classes``), a strip of source
  images of the class and the target images the source classifier gives it most probability;
- estimators: with more than one ``estimate`` stage, their P_t side by side on the classes
  any of them ranks high, and how far apart they are (total variation distance);
- duplicates: the flagged pairs of each ``dedup`` stage, source thumbnail beside target
  thumbnail, borderline ones (nearest their check's threshold) first, and the calibration
  histogram when ``--calibrate`` drew one;
- results: the arms table with paired differences and intervals (results.json), the size
  sweep plot, every stage's time, and the command that reproduces the run.

Self-contained: the script, the styles and the data are inside report.html; thumbnails
(small PNGs, made once) and plots lie next to it in OUT/report_files/. Nothing is fetched.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datl.core.errors import UserError
from datl.core.files import atomic_output
from datl.manifests import ManifestMeta, open_manifest

logger = logging.getLogger(__name__)
OUTPUTS = {"weight": ("weights.parquet",), "estimate": ("prior.parquet",), "dedup": ("duplicates.parquet",)}
THUMB = 64  # thumbnail side in pixels
FILES = "report_files"


@dataclass
class Stage:
    name: str
    kind: str
    folder: Path
    inputs: dict[str, str]  # input name -> path (resolved)
    params: dict
    seconds: float | None


@dataclass
class Report:
    out: Path
    stages: dict[str, Stage]


def read_stages(out: Path) -> dict[str, Stage]:
    """Every stage folder of a ``datl run`` output (one with a stamp.json), in name order."""
    stages = {}
    for stamp in sorted(out.glob("*/stamp.json")):
        try:
            s = json.loads(stamp.read_text())
            if not isinstance(s, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            logger.warning(
                f"warning: {stamp} cannot be read ({type(e).__name__}): stage {stamp.parent.name} "
                "is left out of the report; rerun it (`datl run --from " + stamp.parent.name + "`)"
            )
            continue
        inputs = {k: str(resolve_ref(out, v.get("ref", ""))) for k, v in s.get("inputs", {}).items()}
        stages[stamp.parent.name] = Stage(
            stamp.parent.name, s.get("kind", "?"), stamp.parent, inputs, s.get("params", {}), s.get("seconds")
        )
    return stages


def resolve_ref(out: Path, ref: str) -> Path:
    """'@stage/file' -> OUT/stage/file; '@stage' -> OUT/stage; a path as it is."""
    if ref.startswith("@"):
        return out / ref[1:]
    return Path(ref)


class Thumbs:
    """Thumbnails written once into OUT/report_files/thumbs/, named by manifest and row."""

    def __init__(self, folder: Path):
        self.folder = folder / "thumbs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.made = 0
        self.unreadable = 0

    def of_rows(self, manifest_path: str, rows: list[int]) -> dict[int, str | None]:
        """{row: relative thumbnail path, or None if unreadable} for rows of a manifest."""
        from datl.manifests.address import AddressColumns
        from datl.manifests.images import DECODE_ERRORS, load_image

        m = open_manifest(manifest_path)
        st = m.path.stat()  # a rewritten manifest gets new thumbnails, never another's
        key = hashlib.sha256(f"{m.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:8]
        name = {row: f"{m.path.stem}-{key}-{row}.png" for row in set(rows)}
        todo = np.array(sorted(r for r, n in name.items() if not (self.folder / n).exists()), np.int64)
        bad: set[int] = set()
        if len(todo):  # the missing ones, read in one streamed pass over the manifest
            taken = pa.concat_tables(m.iter_take(todo, ["path", *m.address_columns]))
            where = AddressColumns(taken, str(m.folder))
            for i, row in enumerate(todo.tolist()):
                try:
                    img = load_image(where.address(i), "RGB", draft=(THUMB, THUMB))
                except DECODE_ERRORS:
                    bad.add(row)
                    continue
                img.thumbnail((THUMB, THUMB))
                with atomic_output(self.folder / name[row]) as tmp:
                    img.save(tmp, format="PNG")
            self.made += len(todo) - len(bad)
            self.unreadable += len(bad)
        return {row: None if row in bad else f"{FILES}/thumbs/{n}" for row, n in name.items()}


def rows_of_ids(manifest_path: str, ids: list[str]) -> dict[str, int]:
    """{id: row} for the given ids, in one streamed pass over the id column."""
    want = pa.array(sorted(set(ids)), pa.string())
    found: dict[str, int] = {}
    start = 0
    for b in open_manifest(manifest_path).iter_batches(["id"]):
        col = b.column(0)
        hit = np.flatnonzero(pc.is_in(col, value_set=want).to_numpy(zero_copy_only=False))
        for i in hit:
            found.setdefault(col[int(i)].as_py(), start + int(i))
        start += b.num_rows
    return found


def first_rows_per_class(manifest_path: str, labels: list[int], k: int) -> dict[int, list[int]]:
    """The first ``k`` rows of each wanted class, in one streamed pass over the label column
    (a multi-label source: the first rows carrying the label)."""
    from datl.manifests import labelsets

    want = set(labels)
    rows: dict[int, list[int]] = {c: [] for c in labels}
    start = 0
    m = open_manifest(manifest_path)
    for b in m.iter_batches([m.label_column]):
        if m.multi_label:
            offsets, lab, _ = labelsets.flat(b.column(0))
            at = np.repeat(np.arange(b.num_rows), np.diff(offsets))
        else:
            lab = b.column(0).fill_null(-1).to_numpy(zero_copy_only=False)
            at = np.arange(b.num_rows)
        for j in np.flatnonzero(np.isin(lab, list(want))):
            c, i = int(lab[j]), int(at[j])
            if c in want and len(rows[c]) < k:
                rows[c].append(start + i)
                if len(rows[c]) == k:
                    want.discard(c)
        if not want:
            break
        start += b.num_rows
    return rows


def weights_section(rep: Report, st: Stage) -> dict:
    t = pq.read_table(st.folder / "weights.parquet")
    cols = ["label", "class_name", "n_source", "p_source", "p_target", "weight", "n_excluded"]
    cols += [c for c in ("w_low", "w_high") if c in t.column_names]  # the prior's 95% interval, as weights
    reached, reached_in = None, None
    if "p_expected" in t.column_names:  # a multi-label source: the label shares a sample is expected to reach
        cols.append("p_expected")
        reached_in, reached = reached_shares(rep, st, t.num_rows)
        if reached is not None:
            cols.append("p_sample")
    rows = [[r.get(c) for c in cols] for r in t.select([c for c in cols if c in t.column_names]).to_pylist()]
    if reached is not None:
        for r in rows:
            r[-1] = float(reached[int(r[0])])
    plot = st.folder / "weights.png"
    meta = ManifestMeta.from_schema(t.schema, st.folder / "weights.parquet")
    return {
        "per_image": (meta.params.get("per_image") if meta else None),  # curate weight --per-image: what it found
        "stage": st.name,
        "columns": cols,
        "rows": rows,
        "plot": copy_file(rep, plot, f"{st.name}-weights.png") if plot.exists() else None,
        "prior_stage": stage_of(st.inputs.get("prior", "")),
        "source": st.inputs.get("source"),
        "sample_stage": reached_in,
    }


def reached_shares(rep: Report, st: Stage, k: int) -> tuple[str | None, np.ndarray | None]:
    """A multi-label source: the label shares the first sample drawn by these weights actually
    reached (co-occurring labels come along, so they differ from P_t), and that sample's stage."""
    mine = str(st.folder / "weights.parquet")
    for s in rep.stages.values():
        path = s.folder / "sample.parquet"
        if s.kind == "sample" and s.inputs.get("weights") == mine and path.exists():
            counts, _ = open_manifest(path).label_counts()
            if len(counts) == k and counts.sum():
                return s.name, counts / counts.sum()
    return None, None


def stage_of(path: str) -> str | None:
    p = Path(path)
    return p.parent.name if p.suffix == ".parquet" else (p.name or None)


def copy_file(rep: Report, src: Path, name: str) -> str:
    dest = rep.out / FILES / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return f"{FILES}/{name}"


def evidence_section(rep: Report, weights: dict, thumbs: Thumbs, n_classes: int, per_class: int, device: str) -> dict:
    """Source images of the top classes by weight, and the target images the source classifier
    gives each of them most probability (one inference pass over the target: the small side)."""
    rows = weights["rows"]
    top = [int(r[0]) for r in sorted(rows, key=lambda r: -(r[5] or 0))[:n_classes]]
    source = weights.get("source")
    ev: dict[str, dict] = {str(c): {"source": [], "target": []} for c in top}
    if source and Path(source).exists():
        per = first_rows_per_class(source, top, per_class)
        got = thumbs.of_rows(source, [r for rs in per.values() for r in rs])
        for c, rs in per.items():
            ev[str(c)]["source"] = [{"src": got[r]} for r in rs if got.get(r)]
    prior = rep.stages.get(weights.get("prior_stage") or "")
    note = None
    if (
        prior is not None
        and prior.kind == "estimate"
        and Path(prior.inputs.get("model", "")).exists()
        and Path(prior.inputs.get("target", "")).exists()
    ):
        import torch

        from datl.neural.checkpoint import load_model
        from datl.neural.engine import dist
        from datl.neural.engine.inference import run_model

        lm = load_model(prior.inputs["model"])
        target = prior.inputs["target"]
        d = dist.Dist(0, 1, 0, torch.device(dist.resolve_device(device)))
        idx, prob, _ = run_model(lm, open_manifest(target), d, "logits", 256, 0, False)
        if len(idx):
            prob -= prob.max(axis=1, keepdims=True)  # softmax in place: the target x classes array once
            np.exp(prob, out=prob)
            prob /= prob.sum(axis=1, keepdims=True)
            best = {c: np.argsort(-prob[:, c], kind="stable")[:per_class] for c in top}
            got = thumbs.of_rows(target, [int(idx[i]) for order in best.values() for i in order])
            for c, order in best.items():
                ev[str(c)]["target"] = [
                    {"src": got[int(idx[i])], "p": round(float(prob[i, c]), 4)} for i in order if got.get(int(idx[i]))
                ]
    else:
        note = "no estimate stage with its model and target beside this weight stage: target evidence not shown"
    return {"classes": top, "per_class": per_class, "by_class": ev, "note": note}


def estimators_section(rep: Report, top_k: int = 15) -> dict | None:
    ests = {n: s for n, s in rep.stages.items() if s.kind == "estimate" and (s.folder / "prior.parquet").exists()}
    if len(ests) < 2:
        return None
    p, names = {}, None
    for n, s in ests.items():
        t = pq.read_table(s.folder / "prior.parquet")
        p[n] = np.asarray(t.column("p_target").to_numpy(), dtype=np.float64)
        names = t.column("class_name").to_pylist()
    methods = list(p)
    if len({len(v) for v in p.values()}) != 1:
        return None
    top = sorted(
        {int(i) for v in p.values() for i in np.argsort(-v)[:top_k]}, key=lambda i: -max(v[i] for v in p.values())
    )
    tv = [[round(0.5 * float(np.abs(p[a] - p[b]).sum()), 4) for b in methods] for a in methods]
    params = {n: ests[n].params.get("method", "?") for n in methods}
    return {
        "methods": methods,
        "method_params": params,
        "rows": [[names[i], *[round(float(p[m][i]), 5) for m in methods]] for i in top],
        "tv": tv,
    }


def shift_checks_section(rep: Report) -> list[dict]:
    """Each estimate stage's label-shift check (curate/estimate/shift_check.py), when it ran."""
    out = []
    for n, s in rep.stages.items():
        path = s.folder / "prior.parquet"
        if s.kind != "estimate" or not path.exists():
            continue
        raw = (pq.read_schema(path).metadata or {}).get(b"datl")
        chk = json.loads(raw).get("params", {}).get("label_shift_check") if raw else None
        if chk:
            out.append({"stage": n, **chk})
    return out


def duplicates_section(rep: Report, thumbs: Thumbs, n_pairs: int) -> list[dict]:
    out = []
    for n, s in rep.stages.items():
        f = s.folder / "duplicates.parquet"
        if s.kind != "dedup" or not f.exists():
            continue
        meta = json.loads((pq.read_schema(f).metadata or {}).get(b"datl", b"{}"))
        params = meta.get("params", {})
        thr = {"pixel": params.get("pixel_threshold", 0.96), "feature": params.get("threshold", 0.96)}
        t = pq.read_table(f, columns=["id", "target_id", "similarity", "match"])  # one row per flagged image
        match = t.column("match").to_numpy(zero_copy_only=False)
        sim = t.column("similarity").to_numpy(zero_copy_only=False).astype(np.float64)
        margin = np.full(len(sim), np.inf)
        for check, value in thr.items():
            margin[match == check] = sim[match == check] - value
        order = np.argsort(margin, kind="stable")[:n_pairs]  # ties in the source's row order
        shown = t.take(pa.array(order, pa.int64())).to_pylist()
        src_rows = rows_of_ids(s.inputs["source"], [r["id"] for r in shown]) if shown else {}
        tgt_rows = rows_of_ids(s.inputs["target"], [r["target_id"] for r in shown]) if shown else {}
        st = thumbs.of_rows(s.inputs["source"], list(src_rows.values()))
        tt = thumbs.of_rows(s.inputs["target"], list(tgt_rows.values()))
        pairs = [
            {
                "id": r["id"],
                "target_id": r["target_id"],
                "similarity": round(float(r["similarity"]), 4),
                "match": r["match"],
                "threshold": None if r["match"] == "exact" else thr[r["match"]],
                "source_thumb": st.get(src_rows.get(r["id"], -1)),
                "target_thumb": tt.get(tgt_rows.get(r["target_id"], -1)),
            }
            for r in shown
        ]
        counts = {k: int((match == k).sum()) for k in ("exact", "pixel", "feature")}
        cal = f.with_suffix(".calibration.png")
        notes = {k: int(params.get(f"{k}_source_images") or 0) for k in ("plain", "unreadable", "warned")}
        out.append(
            {
                "stage": n,
                "total": t.num_rows,
                "counts": counts,
                "thresholds": thr,
                "pairs": pairs,
                "notes": notes,
                "n_source": open_manifest(s.inputs["source"]).num_rows if Path(s.inputs["source"]).exists() else None,
                "calibration": copy_file(rep, cal, f"{n}-calibration.png") if cal.exists() else None,
            }
        )
    return out


def results_section(rep: Report) -> dict | None:
    f = rep.out / "results.json"
    if not f.exists():
        return None
    res = json.loads(f.read_text())
    sweep = rep.out / "sweep.png"
    res["sweep_plot"] = copy_file(rep, sweep, "sweep.png") if sweep.exists() else None
    return res


def build(
    out: str | Path,
    pipeline: str | None = None,
    evidence_classes: int = 100,
    per_class: int = 8,
    pairs: int = 100,
    device: str = "auto",
) -> Path:
    """Write OUT/report.html (and OUT/report_files/); returns the page's path."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(out, "is not a folder", "pass the out: folder of a `datl run`")
    stages = read_stages(out)
    if not stages:
        raise UserError(out, "holds no stage folder (no */stamp.json)", "pass the out: folder of a `datl run`")
    rep = Report(out, stages)
    files = out / FILES
    files.mkdir(exist_ok=True)
    thumbs = Thumbs(files)
    for s in stages.values():  # a stage whose output is gone: say so, never leave its section out silently
        missing = [f for f in OUTPUTS.get(s.kind, ()) if not (s.folder / f).exists()]
        if missing:
            logger.warning(
                f"warning: {s.folder / missing[0]} is missing: stage {s.name}'s section of the report "
                f"is left out; rerun it (`datl run --from {s.name}`)"
            )
    weights = [
        weights_section(rep, s)
        for s in stages.values()
        if s.kind == "weight" and (s.folder / "weights.parquet").exists()
    ]
    evidence = evidence_section(rep, weights[0], thumbs, evidence_classes, per_class, device) if weights else None
    data = {
        "title": f"datl report: {out.name}",
        "command": f"datl run {pipeline or 'PIPELINE.yaml'} --out {out}",
        "timings": [{"stage": s.name, "kind": s.kind, "seconds": s.seconds} for s in stages.values()],
        "weights": weights,
        "evidence": evidence,
        "estimators": estimators_section(rep),
        "shift_checks": shift_checks_section(rep),
        "duplicates": duplicates_section(rep, thumbs, pairs),
        "results": results_section(rep),
        "thumbnails": {"made": thumbs.made, "unreadable": thumbs.unreadable},
    }
    page = render(data)
    with atomic_output(out / "report.html") as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return out / "report.html"


def render(data: dict) -> str:
    assets = resources.files("datl") / "page"
    css = (assets / "report.css").read_text(encoding="utf-8")
    js = (assets / "report.js").read_text(encoding="utf-8")
    blob = json.dumps(_clean(data), allow_nan=False).replace("</", "<\\/")
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(data['title'])}</title><style>{css}</style></head>\n<body>\n"
        f"<noscript>This report needs JavaScript (it is inline; nothing is fetched).</noscript>\n"
        f'<main id="app"></main>\n'
        f'<script type="application/json" id="report-data">{blob}</script>\n'
        f"<script>{js}</script>\n</body></html>\n"
    )


def _clean(x):
    """JSON-ready: NumPy scalars as Python numbers, NaN and infinities as null."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x

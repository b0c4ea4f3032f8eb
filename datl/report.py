"""The ``compare`` stage: the arms' test accuracy over seeds, as a table, results.json and report.md."""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from manifests import Manifest, atomic_output

from .pipeline import Pipeline, Stage
from .stats import paired_difference

ARM_NOTES = {
    "adaptive": "importance-weighted sample, with replacement (Ngiam et al. 2018)",
    "adaptive_elastic": "importance-weighted sample, without replacement",
    "uniform": "uniform random sample of the same size",
    "all_source": "the whole source pool (duplicates of target images removed)",
    "scratch": "no pretraining: fine-tuned from random init",
}


def distinct_images(path: Path) -> int:
    """Distinct ids of a pretraining set: a with-replacement sample repeats rows."""
    import pyarrow.compute as pc

    return int(pc.count_distinct(Manifest(path).read(["id"]).column("id")).as_py())


def summarise(pipe: Pipeline, stage: Stage) -> dict:
    arms = {}
    for arm in stage.params["arms"]:
        accs = {}
        for seed in stage.params["seeds"]:
            metrics = json.loads(pipe.ref_path(stage.inputs[f"{arm}.s{seed}"]).read_text())
            accs[str(seed)] = float(metrics["test_accuracy"])
        ref = stage.inputs.get(f"{arm}.s{stage.params['seeds'][0]}.pretrain_set")
        size = Manifest(pipe.ref_path(ref)).num_rows if ref else 0
        values = list(accs.values())
        arms[arm] = {"test_accuracy": statistics.fmean(values),
                     "test_accuracy_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "test_accuracy_min": min(values), "test_accuracy_max": max(values),
                     "per_seed": accs, "pretrain_size": size,
                     "distinct_images": distinct_images(pipe.ref_path(ref)) if ref else 0}
    base = stage.params.get("baseline")
    if base is not None:
        for arm, r in arms.items():
            if arm != base:
                r["vs_baseline"] = paired_difference(r["per_seed"], arms[base]["per_seed"], base)
    return {"arms": arms, "seeds": stage.params["seeds"], "baseline": base, "pipeline": str(pipe.path)}


def _versus(r: dict) -> str:
    v = r.get("vs_baseline")
    if v is None:
        return "(baseline)"
    if v["ci95"] is None:
        return f"{100 * v['diff_mean']:+.1f} pt, n={v['n_pairs']}"
    lo, hi = v["ci95"]
    return f"{100 * v['diff_mean']:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}] p={v['p_value']:.3f}"


def table(results: dict) -> str:
    base = results.get("baseline")
    rows = [("arm", "draws", "distinct", "mean acc", "std", "min - max", "seeds",
             f"vs {base}: diff [95% CI], paired" if base else "")]
    for arm, r in results["arms"].items():
        rows.append((arm, f"{r['pretrain_size']:,}", f"{r.get('distinct_images', 0):,}", f"{r['test_accuracy']:.4f}",
                     f"{r['test_accuracy_std']:.4f}", f"{r['test_accuracy_min']:.4f} - {r['test_accuracy_max']:.4f}",
                     str(len(r["per_seed"])), _versus(r) if base else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i in (0, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def markdown(pipe: Pipeline, results: dict, folder: Path, plot: Path | None) -> str:
    out = [f"# datl run: {pipe.path.name}", "",
           f"Target test accuracy after fine-tuning, mean and spread over seeds {results['seeds']}; the "
           f"difference to {results.get('baseline')} is paired by seed, with a 95% t interval.", "",
           "| arm | what it pretrains on | draws | distinct images | mean accuracy | std | min - max | "
           "vs baseline |",
           "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for arm, r in results["arms"].items():
        out.append(f"| {arm} | {ARM_NOTES.get(arm, '')} | {r['pretrain_size']:,} | {r.get('distinct_images', 0):,} | "
                   f"{r['test_accuracy']:.4f} | {r['test_accuracy_std']:.4f} | "
                   f"{r['test_accuracy_min']:.4f} - {r['test_accuracy_max']:.4f} | "
                   f"{_versus(r) if results.get('baseline') else ''} |")
    if plot is not None:
        out += ["", "## Importance weights", "", f"![weights]({os.path.relpath(plot, folder)})"]
    out += ["", "Per-stage logs: `logs/`; each stage's parameters and input hashes: `STAGE/stamp.json`."]
    return "\n".join(out) + "\n"


def compare(pipe: Pipeline, stage: Stage, folder: Path) -> str:
    """Write OUT/compare/results.json and report.md, copies at OUT/, and return the table."""
    results = summarise(pipe, stage)
    plot = pipe.ref_path(stage.inputs["plot"]) if "plot" in stage.inputs else None
    for where in (folder, pipe.out):
        with atomic_output(where / "results.json") as tmp:
            Path(tmp).write_text(json.dumps(results, indent=2) + "\n")
        with atomic_output(where / "report.md") as tmp:
            Path(tmp).write_text(markdown(pipe, results, where, plot))
    return table(results)

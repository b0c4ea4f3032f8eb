"""The ``compare`` stage: the arms' test accuracy over seeds, as a table, results.json and report.md."""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from manifests import Manifest, atomic_output

from .pipeline import Pipeline, Stage

ARM_NOTES = {
    "adaptive": "importance-weighted sample, with replacement (Ngiam et al. 2018)",
    "adaptive_elastic": "importance-weighted sample, without replacement",
    "uniform": "uniform random sample of the same size",
    "all_source": "the whole source pool (duplicates of target images removed)",
    "scratch": "no pretraining: fine-tuned from random init",
}


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
                     "per_seed": accs, "pretrain_size": size}
    return {"arms": arms, "seeds": stage.params["seeds"], "pipeline": str(pipe.path)}


def table(results: dict) -> str:
    rows = [("arm", "pretrain size", "mean acc", "std", "min - max", "seeds")]
    for arm, r in results["arms"].items():
        rows.append((arm, f"{r['pretrain_size']:,}", f"{r['test_accuracy']:.4f}", f"{r['test_accuracy_std']:.4f}",
                     f"{r['test_accuracy_min']:.4f} - {r['test_accuracy_max']:.4f}", str(len(r["per_seed"]))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(pipe: Pipeline, results: dict, folder: Path, plot: Path | None) -> str:
    out = [f"# datl run: {pipe.path.name}", "",
           f"Target test accuracy after fine-tuning, mean and spread over seeds {results['seeds']}.", "",
           "| arm | what it pretrains on | pretrain size | mean accuracy | std | min - max |",
           "| --- | --- | ---: | ---: | ---: | --- |"]
    for arm, r in results["arms"].items():
        out.append(f"| {arm} | {ARM_NOTES.get(arm, '')} | {r['pretrain_size']:,} | {r['test_accuracy']:.4f} | "
                   f"{r['test_accuracy_std']:.4f} | {r['test_accuracy_min']:.4f} - {r['test_accuracy_max']:.4f} |")
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

"""The ``compare`` stage: the arms' test accuracy over seeds, as a table, results.json and report.md."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from datl.core.files import atomic_output, png_metadata, write_json
from datl.manifests import Manifest

from .pipeline import Pipeline, Stage
from .stats import mean_interval, paired_difference

ARM_NOTES = {
    "adaptive": "importance-weighted sample, with replacement (Ngiam et al. 2018)",
    "adaptive_bcts": "the same, with P_t(y) from calibrated EM (em-bcts) instead of the mean",
    "adaptive_auto": "the same, with P_t(y) by the estimator --method auto chose on the calibration split",
    "label_subset": "uniform among the source images carrying hand-picked classes (the paper's baseline)",
    "adaptive_elastic": "importance-weighted sample, without replacement",
    "uniform": "uniform random sample of the same size",
    "all_source": "the whole source pool (duplicates of target images removed)",
    "scratch": "no pretraining: fine-tuned from random init",
}


def base_arm(arm: str) -> tuple[str, int | None]:
    """'adaptive@1500' -> ('adaptive', 1500); 'adaptive' -> ('adaptive', None)."""
    name, _, size = arm.partition("@")
    return name, int(size) if size else None


def baseline_of(arm: str, base: str, arms: dict) -> str | None:
    """The arm to pair ``arm`` with: the baseline at the same size in a sweep, else the baseline."""
    _, size = base_arm(arm)
    same_size = f"{base}@{size}"
    if size is not None and same_size in arms:
        return same_size
    return base if base in arms else None


def distinct_images(path: Path) -> int:
    """Distinct ids of a pretraining set: a with-replacement sample repeats rows."""
    import pyarrow.compute as pc

    return int(pc.count_distinct(Manifest(path).read(["id"]).column("id")).as_py())


def summarise(pipe: Pipeline, stage: Stage) -> dict:
    arms = {}
    for arm in stage.params["arms"]:
        accs, vals = {}, {}
        for seed in stage.params["seeds"]:
            metrics = json.loads(pipe.ref_path(stage.inputs[f"{arm}.s{seed}"]).read_text())
            accs[str(seed)] = float(metrics["test_accuracy"])
            if "val_accuracy" in metrics:
                vals[str(seed)] = float(metrics["val_accuracy"])
        ref = stage.inputs.get(f"{arm}.s{stage.params['seeds'][0]}.pretrain_set")
        size = Manifest(pipe.ref_path(ref)).num_rows if ref else 0
        values = list(accs.values())
        arms[arm] = {
            "test_accuracy": statistics.fmean(values),
            "test_accuracy_std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "test_accuracy_min": min(values),
            "test_accuracy_max": max(values),
            "per_seed": accs,
            "pretrain_size": size,
            "distinct_images": distinct_images(pipe.ref_path(ref)) if ref else 0,
        }
        if vals:
            arms[arm] |= {"val_accuracy": statistics.fmean(vals.values()), "val_per_seed": vals}
    base = stage.params.get("baseline")
    if base is not None:
        for arm, r in arms.items():
            other = baseline_of(arm, base, arms)
            if other is not None and other != arm:
                r["vs_baseline"] = paired_difference(r["per_seed"], arms[other]["per_seed"], other)
    results = {"arms": arms, "seeds": stage.params["seeds"], "baseline": base, "pipeline": str(pipe.path)}
    if stage.params.get("sizes"):
        results["sizes"] = stage.params["sizes"]
    if stage.params.get("select"):
        results["selection"] = select(arms, stage.params["select"])
    return results


def select(arms: dict, among: list[str]) -> dict:
    """The arm with the best mean validation accuracy among ``among`` (ties: the first listed).
    Chosen without looking at test accuracy; its test accuracy is then what is reported."""
    val = {a: arms[a]["val_accuracy"] for a in among}
    chosen = max(among, key=lambda a: (val[a], -among.index(a)))
    return {
        "among": among,
        "on": "val_accuracy, mean over seeds",
        "val_accuracy": val,
        "chosen": chosen,
        "test_accuracy": arms[chosen]["test_accuracy"],
    }


def _versus(r: dict) -> str:
    v = r.get("vs_baseline")
    if v is None:
        return "(baseline)"
    if v["ci95"] is None:
        return f"{100 * v['diff_mean']:+.1f} pt, n={v['n_pairs']}"
    lo, hi = v["ci95"]
    return f"{100 * v['diff_mean']:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}] p={v['p_value']:.3f}"


def table(results: dict, verdict: bool = True) -> str:
    """The result table; ``verdict``: end with :func:`verdict_line` (`datl run` prints it last,
    after the paths)."""
    base = results.get("baseline")
    rows = [
        (
            "arm",
            "draws",
            "distinct",
            "val acc",
            "test acc",
            "std",
            "min - max",
            "seeds",
            f"vs {base}{' (same size)' if results.get('sizes') else ''}: test diff [95% CI], paired" if base else "",
        )
    ]
    for arm, r in results["arms"].items():
        rows.append(
            (
                arm,
                f"{r['pretrain_size']:,}",
                f"{r.get('distinct_images', 0):,}",
                f"{r['val_accuracy']:.4f}" if "val_accuracy" in r else "-",
                f"{r['test_accuracy']:.4f}",
                f"{r['test_accuracy_std']:.4f}",
                f"{r['test_accuracy_min']:.4f} - {r['test_accuracy_max']:.4f}",
                str(len(r["per_seed"])),
                _versus(r) if base else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i in (0, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    if "selection" in results:
        lines.append(_selection_line(results["selection"]))
    if base and verdict:
        lines.append(verdict_line(results))
    return "\n".join(lines)


def verdict_line(results: dict) -> str:
    """What the paired 95% intervals establish, in words: the arms above and below the baseline
    (interval clear of 0) and those the run cannot tell from it; where the run chose an arm on
    validation (``select``), whether that arm is above it; plainly, when the paper's arm
    (``adaptive``) is not shown above it."""
    base = results["baseline"]
    above, below, unclear = [], [], []
    for arm, r in results["arms"].items():
        v = r.get("vs_baseline")
        if not v or v.get("ci95") is None:
            continue
        lo, hi = v["ci95"]
        (above if lo > 0 else below if hi < 0 else unclear).append(arm)
    n = min((r["vs_baseline"]["n_pairs"] for r in results["arms"].values() if r.get("vs_baseline")), default=0)
    parts = [f"above {base}: {', '.join(above) or 'none'}", f"below: {', '.join(below) or 'none'}"]
    if unclear:
        parts.append(f"not told apart from {base}: {', '.join(unclear)}")
    line = f"at 95% over {n} paired seeds, {'; '.join(parts)}"
    chosen = (results.get("selection") or {}).get("chosen")
    if chosen in above:  # chosen on validation, so its test interval is the method's evidence
        line += f". The arm chosen on validation, {chosen}, is above {base}"
    elif chosen is not None and chosen != base:
        line += f". The arm chosen on validation, {chosen}, is not shown above {base}"
    adaptive = [a for a in results["arms"] if base_arm(a)[0] == "adaptive"]
    if adaptive and not set(adaptive) & set(above):
        line += f". This run does not establish that the adaptive sample (the paper's class weights) beats {base}"
    return line


def sweep_plot(results: dict, path: Path) -> Path | None:
    """Test accuracy against pretraining-set size for every swept arm: the mean over seeds with its
    95% t interval (the paper's Figure 3, on this pipeline's data). None when nothing was swept."""
    curves: dict[str, list[tuple[int, float, float, float]]] = {}
    for arm, r in results["arms"].items():
        name, size = base_arm(arm)
        if size is not None:
            curves.setdefault(name, []).append((size, *mean_interval(list(r["per_seed"].values()))))
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, (name, pts) in enumerate(sorted(curves.items())):
        pts.sort()
        z, m, lo, hi = (list(c) for c in zip(*pts))
        shift = [x * (1 + 0.03 * (k - (len(curves) - 1) / 2)) for x in z]  # keep the bars apart
        ax.errorbar(
            shift,
            m,
            yerr=[[a - b for a, b in zip(m, lo)], [b - a for a, b in zip(m, hi)]],
            marker="o",
            capsize=3,
            label=name,
        )
    for arm, r in results["arms"].items():  # arms not swept (e.g. all_source, scratch): a line across
        if base_arm(arm)[1] is None:
            ax.axhline(r["test_accuracy"], ls=":", color="grey", lw=1)
            ax.annotate(arm, (ax.get_xlim()[0], r["test_accuracy"]), fontsize=7, color="grey", va="bottom")
    ax.set_xscale("log")
    sizes = sorted({base_arm(a)[1] for a in results["arms"] if base_arm(a)[1] is not None})
    ax.set_xticks(sizes, [f"{z:,}" for z in sizes])
    ax.minorticks_off()
    ax.set_xlabel("pretraining-set size (draws)")
    ax.set_ylabel("target test accuracy")
    ax.set_title(f"mean over {len(results['seeds'])} seeds, 95% t intervals", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata=png_metadata())
    plt.close(fig)
    return path


def _selection_line(sel: dict) -> str:
    vals = ", ".join(f"{a} {v:.4f}" for a, v in sel["val_accuracy"].items())
    return f"chosen on validation accuracy ({vals}): {sel['chosen']}, test accuracy {sel['test_accuracy']:.4f}"


def markdown(pipe: Pipeline, results: dict, folder: Path, plot: Path | None) -> str:
    out = [
        f"# datl run: {pipe.path.name}",
        "",
        f"Target test accuracy after fine-tuning, mean and spread over seeds {results['seeds']}; the "
        f"difference to {results.get('baseline')} is paired by seed, with a 95% t interval. Validation "
        f"accuracy (when the fine-tuning has a val set) is what choices are made on.",
        "",
        "| arm | what it pretrains on | draws | distinct images | val accuracy | test accuracy | std | min - max | "
        "vs baseline (test) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for arm, r in results["arms"].items():
        val = f"{r['val_accuracy']:.4f}" if "val_accuracy" in r else "-"
        out.append(
            f"| {arm} | {ARM_NOTES.get(arm, '')} | {r['pretrain_size']:,} | {r.get('distinct_images', 0):,} | "
            f"{val} | {r['test_accuracy']:.4f} | {r['test_accuracy_std']:.4f} | "
            f"{r['test_accuracy_min']:.4f} - {r['test_accuracy_max']:.4f} | "
            f"{_versus(r) if results.get('baseline') else ''} |"
        )
    if "selection" in results:
        out += ["", _selection_line(results["selection"]) + "."]
    if results.get("baseline"):
        out += ["", verdict_line(results) + "."]
    if (folder / "sweep.png").exists():
        out += ["", "## Accuracy against pretraining-set size", "", "![sweep](sweep.png)"]
    if plot is not None:
        out += ["", "## Importance weights", "", f"![weights]({os.path.relpath(plot, folder)})"]
    out += ["", "Per-stage logs: `logs/`; each stage's parameters and input hashes: `STAGE/stamp.json`."]
    return "\n".join(out) + "\n"


def compare(pipe: Pipeline, stage: Stage, folder: Path) -> str:
    """Write OUT/compare/results.json and report.md, copies at OUT/, and return the table."""
    results = summarise(pipe, stage)
    plot = pipe.ref_path(stage.inputs["plot"]) if "plot" in stage.inputs else None
    for where in (folder, pipe.out):
        sweep_plot(results, where / "sweep.png")
        write_json(where / "results.json", results, sort_keys=False)  # the arms in their pipeline order
        with atomic_output(where / "report.md") as tmp:
            Path(tmp).write_text(markdown(pipe, results, where, plot))
    return table(results)

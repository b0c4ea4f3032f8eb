"""datl report: the HTML page opened in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium), checked as a person would use it: the weights table
sorts, filters and pages; a click shows a class's source and target thumbnails; duplicate
pairs show both images; the results table has the paired interval; nothing is fetched from
the network; no script error. And at 20,000 classes the page holds one page of rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from datl.manifests import ManifestMeta, write_table

from helpers import apt_install, assert_user_error, cli


@pytest.fixture(scope="module")
def browser():
    reason = apt_install(
        ("chromium", "chromium-driver"), lambda: bool(shutil.which("chromium") and shutil.which("chromedriver"))
    )
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def run_out(pipeline_run) -> Path:
    """The shared shrunken pipeline's run (tests/_lib/pipelines.py): 2 seeds, arms adaptive and
    scratch, two estimators, dedup at thresholds of 0.9 so that it has pairs to show."""
    pipe, res = pipeline_run
    assert res.returncode == 0, res.stdout + res.stderr
    out = pipe.parent / "out"
    assert "report: " in res.stdout and (out / "report.html").exists()
    return out


def open_page(driver, page: Path):
    driver.get(page.as_uri())
    assert driver.find_element("css selector", "body").get_attribute("data-ready") == "1"
    return driver


def errors_and_fetches(driver) -> tuple[list, list]:
    logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return logs, [u for u in fetched if not u.startswith("file://")]


def visible_rows(driver) -> list[list[str]]:
    return [
        [td.text for td in tr.find_elements("css selector", "td")]
        for tr in driver.find_elements("css selector", "#weights-table tr.class-row")
    ]


def loaded(driver, selector: str) -> list[int]:
    return driver.execute_script(f"return [...document.querySelectorAll('{selector}')].map(i => i.naturalWidth)")


@pytest.mark.browser
@pytest.mark.slow
def test_the_report_as_a_person_uses_it(run_out, browser):
    d = open_page(browser, run_out / "report.html")
    weights = {r["class_name"]: r for r in pa.parquet.read_table(run_out / "weights" / "weights.parquet").to_pylist()}
    # every class is in the table, a page at a time, heaviest first by default
    rows = visible_rows(d)
    assert len(rows) == 50 and len(weights) == 82
    top = max(weights.values(), key=lambda r: r["weight"])["class_name"]
    assert rows[0][1] == top
    assert "82 of 82 classes; page 1 of 2" in d.find_element("css selector", ".pager-info").text
    # sort by class name, then filter
    d.find_element("css selector", "#weights-table th[data-col=class_name]").click()
    assert visible_rows(d)[0][1] == sorted(weights)[0]
    box = d.find_element("css selector", "#class-filter")
    box.send_keys("mnist/")
    assert sorted(r[1] for r in visible_rows(d)) == sorted(n for n in weights if "mnist/" in n)
    box.clear()
    box.send_keys("glyph/Q")  # case-insensitive, as a search box is
    assert sorted(r[1] for r in visible_rows(d)) == ["glyph/Q", "glyph/q"]
    box.clear()
    box.send_keys("animal/zebra")
    (row,) = visible_rows(d)
    assert float(row[5]) == pytest.approx(weights["animal/zebra"]["weight"], rel=1e-3)
    # next page
    box.clear()
    box.send_keys(" ")
    box.clear()
    d.execute_script("document.getElementById('class-filter').dispatchEvent(new Event('input'))")
    d.find_element("css selector", ".weights .next").click()
    assert len(visible_rows(d)) == 32
    # a click on the top class shows its source images and target images, all loaded
    d.find_element("css selector", ".weights .prev").click()
    d.find_element("css selector", "#weights-table th[data-col=weight]").click()  # back to weight, descending
    d.find_element("css selector", "#weights-table tr.class-row").click()
    assert f"Evidence for {top}" in d.find_element("css selector", "#evidence h3").text
    src, tgt = loaded(d, "#evidence img.ev-source"), loaded(d, "#evidence img.ev-target")
    assert len(src) == min(8, weights[top]["n_source"]) and len(tgt) == 8 and min(src + tgt) > 0
    # duplicates: pairs with both thumbnails, borderline first
    pairs = d.find_elements("css selector", "#duplicates-table tr.pair")
    dup = pa.parquet.read_table(run_out / "dedup" / "duplicates.parquet")
    assert len(pairs) == min(dup.num_rows, 100) > 0
    assert min(loaded(d, "#duplicates-table img")) > 0 and len(loaded(d, "#duplicates-table img")) == 2 * len(pairs)
    notes = d.find_element("css selector", ".dup-notes").text
    meta = json.loads(pa.parquet.read_schema(run_out / "dedup" / "duplicates.parquet").metadata[b"datl"])["params"]
    assert f"{meta['plain_source_images']} too plain" in notes and "decoded with a warning from PIL: 0" in notes
    n_source = pa.parquet.read_metadata(run_out / "data" / "source.parquet").num_rows
    over = [c for c in ("exact", "pixel", "feature") if (dup.column("match").to_pylist().count(c)) > 0.05 * n_source]
    assert len(d.find_elements("css selector", ".dup-warning")) == len(over)  # what curate dedup warned about
    sims = [float(p.find_element("css selector", "td.sim").text) for p in pairs if "exact" not in p.text]
    assert sims == sorted(sims)  # all thresholds are 0.9 here: nearest the threshold first
    # estimators side by side, results with the paired interval, timings
    assert "prior_em" in d.find_element("css selector", "#estimators-table").text
    assert "stage prior_em: ROC AUC" in d.find_element("css selector", "#shift-check").text  # with --calibration
    arms = {
        tr.get_attribute("data-arm"): tr.text for tr in d.find_elements("css selector", "#results-table tr.arm-row")
    }
    assert set(arms) == {"adaptive", "scratch"} and "vs scratch" in arms["adaptive"] and "n=2" in arms["adaptive"]
    stages = d.find_element("css selector", "#timings-table").text
    assert "source_model" in stages and "dedup" in stages
    errors, fetched = errors_and_fetches(d)
    assert errors == [] and fetched == [], (errors, fetched)
    files = list((run_out / "report_files" / "thumbs").iterdir())
    assert files and max(f.stat().st_size for f in files) < 20_000  # thumbnails, not the images


@pytest.mark.browser
@pytest.mark.slow
def test_twenty_thousand_classes_render_one_page(tmp_path, browser):
    out = tmp_path / "big"
    stage = out / "weights"
    stage.mkdir(parents=True)
    k = 20_000
    rng = np.random.default_rng(0)
    p_t = rng.dirichlet(np.ones(k))
    table = pa.table(
        {
            "label": pa.array(np.arange(k), pa.int32()),
            "class_name": [f"class_{i:05d}" for i in range(k)],
            "n_source": rng.integers(1, 1000, k),
            "p_source": np.full(k, 1 / k),
            "p_target": p_t,
            "weight": p_t * k,
            "n_excluded": np.zeros(k, np.int64),
        }
    )
    write_table(stage / "weights.parquet", table, ManifestMeta(stage="weight"))
    (stage / "stamp.json").write_text(json.dumps({"kind": "weight", "inputs": {}, "params": {}, "seconds": 1.0}))
    res = cli("datl", "report", str(out))
    assert res.returncode == 0, res.stderr
    d = open_page(browser, out / "report.html")
    assert len(d.find_elements("css selector", "tr.class-row")) == 50  # not 20,000 DOM rows
    assert visible_rows(d)[0][1] == f"class_{int(np.argmax(p_t)):05d}"
    d.find_element("css selector", "#class-filter").send_keys("class_12345")
    assert [r[1] for r in visible_rows(d)] == ["class_12345"]
    d.find_element("css selector", "tr.class-row").click()
    assert "only the" in d.find_element("css selector", "#evidence").text  # no evidence without a source: says so
    assert errors_and_fetches(d) == ([], [])


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    assert_user_error(cli("datl", "report", str(tmp_path)), str(tmp_path), "no stage folder")
    assert_user_error(cli("datl", "report", str(tmp_path / "nope")), "nope", "not a folder")


@pytest.mark.browser
@pytest.mark.slow
def test_a_multi_label_run_reports_label_shares_intervals_and_the_shift_check(tmp_path, browser):
    """The weights table of a multi-label source: the weight's interval, the expected share of a
    sample and the share the first sample reached; a class's source thumbnails are the images
    carrying its label; the label-shift check has its section; what per-image weights found is stated."""
    from PIL import Image

    from datl.manifests import write_manifest

    out = tmp_path / "run"
    for name in ("data", "weights", "sample_adaptive.s0", "prior"):
        (out / name).mkdir(parents=True)
    sets = [[0, 1], [1], [2], [0, 2], [1, 2], [0]]
    for i in range(len(sets)):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(out / "data" / f"{i}.png")
    classes = ["cat", "dog", "owl"]
    src = pa.table({"id": [str(i) for i in range(6)], "path": [f"{i}.png" for i in range(6)],
                    "labels": pa.array(sets, pa.list_(pa.int32()))})  # fmt: skip
    write_manifest(out / "data" / "source.parquet", src, ManifestMeta(classes=classes))
    weights = pa.table(
        {
            "label": pa.array([0, 1, 2], pa.int32()), "class_name": classes, "n_source": [3, 3, 3],
            "p_source": [1 / 3] * 3, "p_target": [0.6, 0.3, 0.1], "weight": [1.8, 0.9, 0.3],
            "w_low": [1.5, 0.7, 0.2], "w_high": [2.1, 1.1, 0.4], "p_expected": [0.5, 0.3, 0.2],
        }
    )  # fmt: skip
    found = {"rows": 6, "weighted": 6, "ess": 3.4, "ess_class": 4.5, "auc": 0.91, "fit_source": 6, "fit_target": 30,
             "temper": 0.25, "clip": 10.0, "file": "image_weights.parquet"}  # fmt: skip
    write_table(out / "weights" / "weights.parquet", weights,
                ManifestMeta(classes=classes, stage="weight", params={"per_image": found}))  # fmt: skip
    sample = src.take([0, 0, 3, 5])  # a with-replacement sample: row 0 twice
    write_manifest(out / "sample_adaptive.s0" / "sample.parquet", sample, ManifestMeta(classes=classes))
    chk = {"auc": 0.83, "auc_low": 0.8, "auc_high": 0.86, "n_target": 60, "n_source": 90, "differ_most": [["owl", 0.9]]}
    prior = pa.table({"label": pa.array([0, 1, 2], pa.int32()), "class_name": classes, "p_target": [0.6, 0.3, 0.1]})
    write_table(out / "prior" / "prior.parquet", prior,
                ManifestMeta(classes=classes, stage="estimate", params={"label_shift_check": chk}))  # fmt: skip
    stamps = {
        "weights": {"kind": "weight", "inputs": {"source": {"ref": "@data/source.parquet"}}},
        "sample_adaptive.s0": {"kind": "sample", "inputs": {"weights": {"ref": "@weights/weights.parquet"}}},
        "prior": {"kind": "estimate", "inputs": {}},
    }
    for name, st in stamps.items():
        (out / name / "stamp.json").write_text(json.dumps({**st, "params": {}, "seconds": 1.0}))
    res = cli("datl", "report", str(out))
    assert res.returncode == 0, res.stderr
    d = open_page(browser, out / "report.html")
    head = d.find_element("css selector", "#weights-table").text
    for col in (
        "weight, 95% low",
        "weight, 95% high",
        "expected share in a sample",
        "share reached in sample_adaptive.s0",
    ):
        assert col in head, (col, head)
    rows = {r[1]: r for r in visible_rows(d)}
    # the sample's label occurrences: cat 0,0,3,5 -> 4 of 7; dog 0,0 -> 2; owl 3 -> 1
    assert (
        rows["cat"][-1].startswith("0.57") and rows["dog"][-1].startswith("0.28") and rows["owl"][-1].startswith("0.14")
    )
    d.find_element("css selector", "tr.class-row").click()  # cat, the top weight: its images carry 'cat'
    assert len(d.find_elements("css selector", "#evidence img")) >= 3
    assert "stage prior: ROC AUC 0.83" in d.find_element("css selector", "#shift-check").text
    per_image = d.find_element("css selector", ".per-image").text  # curate weight --per-image's findings
    assert "effective sample size 3 of 6" in per_image and "against 5 for the class weights alone" in per_image
    assert "owl" in d.find_element("css selector", "#shift-check").text
    assert errors_and_fetches(d) == ([], [])

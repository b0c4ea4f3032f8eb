// datl report: plain JavaScript, no library, nothing fetched. The data is the JSON in
// <script id="report-data">; tables are rendered a page at a time, so 20,000 classes
// never become 20,000 DOM rows.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const PAGE = 50;
  const app = document.getElementById("app");

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }
  function num(v, digits) {
    if (v === null || v === undefined) return "-";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return v.toLocaleString("en");
    return v.toPrecision(digits || 4);
  }
  function section(id, title, ...kids) {
    return el("section", {id: id}, el("h2", {text: title}), ...kids);
  }
  function img(src, cls, alt) {
    return src ? el("img", {src: src, class: cls, alt: alt || "", width: 64, height: 64}) : null;
  }

  // -- header, timings ------------------------------------------------------
  app.append(el("h1", {text: DATA.title}));
  app.append(el("p", {}, "Reproduce: ", el("code", {id: "command", text: DATA.command})));
  const nav = el("nav", {});
  app.append(nav);
  function navLink(id, text) { nav.append(el("a", {href: "#" + id, text: text}), " "); }

  // -- results ----------------------------------------------------------------
  const R = DATA.results;
  if (R) {
    navLink("results", "Results");
    const t = el("table", {id: "results-table"});
    t.append(el("tr", {}, ...["arm", "draws", "distinct images", "val accuracy", "test accuracy", "std",
      "vs baseline (test)", "95% interval"].map(h => el("th", {text: h}))));
    for (const [arm, r] of Object.entries(R.arms || {})) {
      const vs = r.vs_baseline;
      t.append(el("tr", {class: "arm-row", "data-arm": arm},
        el("td", {text: arm}), el("td", {text: num(r.pretrain_size)}), el("td", {text: num(r.distinct_images)}),
        el("td", {text: num(r.val_accuracy)}), el("td", {text: num(r.test_accuracy)}),
        el("td", {text: num(r.test_accuracy_std)}),
        el("td", {text: vs ? (vs.diff_mean >= 0 ? "+" : "") + (100 * vs.diff_mean).toFixed(2) + " pt vs " + vs.baseline : "-"}),
        el("td", {text: vs && vs.ci95 ? "[" + vs.ci95.map(x => (100 * x).toFixed(2)).join(", ") + "] pt, n=" + vs.n_pairs : "-"})));
    }
    const kids = [el("p", {text: "Target test accuracy after fine-tuning, over paired seeds; the difference to the baseline is paired by seed, with a 95% t interval."}), t];
    if (R.selection) kids.push(el("p", {id: "selection", text: "Chosen on validation accuracy: " + R.selection.chosen + " (test accuracy " + num(R.selection.test_accuracy) + ")."}));
    if (R.sweep_plot) kids.push(el("img", {src: R.sweep_plot, class: "plot", alt: "accuracy against pretraining-set size"}));
    app.append(section("results", "Results", ...kids));
  }

  // -- weights + evidence -----------------------------------------------------
  const EV = DATA.evidence;
  function showEvidence(label, name, panel) {
    panel.replaceChildren(el("h3", {text: "Evidence for " + name}));
    const e = EV && EV.by_class[String(label)];
    if (!e) {
      panel.append(el("p", {class: "muted", text: "No thumbnails for this class: only the " + (EV ? EV.classes.length : 0) +
        " classes of highest weight have them (datl report --evidence-classes)."}));
      return;
    }
    panel.append(el("h4", {text: "Source images of the class"}),
      el("div", {class: "strip", id: "ev-source"}, ...e.source.map(s => img(s.src, "ev-source", "source image"))));
    panel.append(el("h4", {text: "Target images the source classifier gives it most probability"}),
      el("div", {class: "strip", id: "ev-target"}, ...e.target.map(s =>
        el("figure", {}, img(s.src, "ev-target", "target image"), el("figcaption", {text: "p " + num(s.p, 2)})))));
    if (EV.note) panel.append(el("p", {class: "muted", text: EV.note}));
  }

  function weightsTable(W, index) {
    const cols = W.columns;
    const heads = {label: "label", class_name: "class", n_source: "n source", p_source: "P_s", p_target: "P_t",
      weight: "weight", n_excluded: "excluded as duplicates", p_expected: "expected share in a sample",
      w_low: "weight, 95% low", w_high: "weight, 95% high",
      p_sample: "share reached in " + (W.sample_stage || "a sample")};
    let sortCol = cols.indexOf("weight"), sortDir = -1, page = 0, rows = W.rows.slice();
    const filter = el("input", {type: "search", class: "class-filter", id: index ? null : "class-filter",
      placeholder: "filter classes by name", "aria-label": "filter classes"});
    const info = el("span", {class: "pager-info"});
    const prev = el("button", {class: "prev", text: "previous"});
    const next = el("button", {class: "next", text: "next"});
    const table = el("table", {class: "weights-table", id: index ? null : "weights-table"});
    const head = el("tr", {});
    const panel = el("div", {class: "evidence", id: index ? null : "evidence"},
      el("p", {class: "muted", text: "Click a class to see its source images and the target images assigned to it."}));
    cols.forEach((c, i) => head.append(el("th", {"data-col": c, text: heads[c] || c, title: "sort",
      onclick: () => { sortDir = sortCol === i ? -sortDir : (c === "class_name" ? 1 : -1); sortCol = i; page = 0; apply(); }})));
    const body = el("tbody", {});
    table.append(el("thead", {}, head), body);
    function apply() {
      const q = filter.value.trim().toLowerCase();
      const ci = cols.indexOf("class_name");
      rows = q ? W.rows.filter(r => String(r[ci]).toLowerCase().includes(q)) : W.rows.slice();
      rows.sort((a, b) => {
        const x = a[sortCol], y = b[sortCol];
        if (x === y) return a[0] - b[0];
        if (x === null) return 1;
        if (y === null) return -1;
        return (x < y ? -1 : 1) * sortDir;
      });
      draw();
    }
    function draw() {
      const pages = Math.max(1, Math.ceil(rows.length / PAGE));
      page = Math.min(page, pages - 1);
      body.replaceChildren(...rows.slice(page * PAGE, (page + 1) * PAGE).map(r => {
        const tr = el("tr", {class: "class-row", "data-label": r[0], tabindex: 0,
          onclick: () => showEvidence(r[0], r[cols.indexOf("class_name")], panel)});
        r.forEach((v, i) => tr.append(cols[i] === "class_name" ? el("td", {class: "name", text: v}) : el("td", {text: num(v)})));
        return tr;
      }));
      head.querySelectorAll("th").forEach((th, i) => th.setAttribute("aria-sort",
        i === sortCol ? (sortDir > 0 ? "ascending" : "descending") : "none"));
      info.textContent = rows.length.toLocaleString("en") + " of " + W.rows.length.toLocaleString("en") +
        " classes; page " + (page + 1) + " of " + pages;
      prev.disabled = page === 0;
      next.disabled = page >= pages - 1;
    }
    filter.addEventListener("input", () => { page = 0; apply(); });
    prev.addEventListener("click", () => { page -= 1; draw(); });
    next.addEventListener("click", () => { page += 1; draw(); });
    apply();
    const left = el("div", {class: "col"}, el("div", {class: "controls"}, filter, prev, next, info), table);
    const right = el("div", {class: "col grow"}, panel);
    const P = W.per_image, int = v => Math.round(v).toLocaleString("en");
    const perImage = P ? el("p", {class: "per-image", text: "Per-image weights (" + P.file + "): effective sample size " +
      int(P.ess) + " of " + int(P.rows) + " source images, against " + int(P.ess_class) +
      " for the class weights alone; domain classifier fitted on " + int(P.fit_target) + " target and " +
      int(P.fit_source) + " source images, in-sample ROC AUC " + num(P.auc, 3) + "; temper " + P.temper +
      ", clip " + P.clip + "."}) : null;
    return el("div", {class: "weights", "data-stage": W.stage}, el("h3", {text: "Stage " + W.stage}), perImage,
      el("div", {class: "two"}, left, right), W.plot ? el("img", {src: W.plot, class: "plot", alt: "weights plot"}) : null);
  }
  if (DATA.weights.length) {
    navLink("weights", "Weights");
    app.append(section("weights", "Importance weights per source class", ...DATA.weights.map(weightsTable)));
  }

  // -- estimators ---------------------------------------------------------------
  const E = DATA.estimators;
  if (E) {
    navLink("estimators", "Estimators");
    const t = el("table", {id: "estimators-table"});
    t.append(el("tr", {}, el("th", {text: "class"}), ...E.methods.map(m => el("th", {text: "P_t " + m + " (" + E.method_params[m] + ")"}))));
    for (const r of E.rows) t.append(el("tr", {}, ...r.map((v, i) => el("td", {text: i ? num(v) : v}))));
    const tv = el("table", {id: "estimators-tv"});
    tv.append(el("tr", {}, el("th", {text: "total variation"}), ...E.methods.map(m => el("th", {text: m}))));
    E.tv.forEach((r, i) => tv.append(el("tr", {}, el("th", {text: E.methods[i]}), ...r.map(v => el("td", {text: num(v)})))));
    app.append(section("estimators", "Estimators side by side",
      el("p", {text: "P_t(y) of every estimate stage on the classes any of them ranks high; below, how far apart the whole distributions are (0: identical, 1: disjoint)."}), t, tv));
  }

  // -- the label-shift check ------------------------------------------------------
  if ((DATA.shift_checks || []).length) {
    navLink("shift-check", "Label-shift check");
    const items = DATA.shift_checks.map(c => el("li", {text: "stage " + c.stage + ": ROC AUC " + num(c.auc) + " [" +
      num(c.auc_low) + ", " + num(c.auc_high) + "] over " + c.n_target + " target and " + c.n_source +
      " source images" + (c.auc_low > 0.6 ? " (fails: the target's images of a class do not look like the source's)" : "") +
      (c.differ_most.length ? "; classes that differ most: " + c.differ_most.map(d => d[0] + " " + num(d[1])).join(", ") : "")}));
    app.append(section("shift-check", "Does P_s(x|y) = P_t(x|y) hold?",
      el("p", {text: "A domain classifier on the source classifier's embeddings, target against the held-out source reweighted by w(y): 0.5 means it cannot tell them apart, as the paper's weights assume."}),
      el("ul", {}, ...items)));
  }

  // -- duplicates ---------------------------------------------------------------
  if (DATA.duplicates.length) {
    navLink("duplicates", "Duplicates");
    const kids = [];
    for (const D of DATA.duplicates) {
      const share = D.n_source ? " (" + (100 * D.total / D.n_source).toFixed(2) + "% of " + D.n_source.toLocaleString("en") + " source images)" : "";
      kids.push(el("h3", {text: "Stage " + D.stage + ": " + D.total.toLocaleString("en") + " source images flagged" + share}));
      kids.push(el("p", {class: "dup-counts", text: "byte-identical " + D.counts.exact + ", pixel >= " + D.thresholds.pixel + ": " + D.counts.pixel +
        ", feature >= " + D.thresholds.feature + ": " + D.counts.feature + ". Borderline pairs (nearest their check's threshold) first."}));
      const N = D.notes || {};
      kids.push(el("p", {class: "dup-notes muted", text: "not seen by the pixel check: " + (N.plain || 0) +
        " too plain (over 90% background, or nearly blank); unreadable: " + (N.unreadable || 0) +
        "; decoded with a warning from PIL: " + (N.warned || 0) + "."}));
      for (const c of ["exact", "pixel", "feature"]) {  // the same rule as curate dedup's warning
        if (D.n_source && D.counts[c] > 0.05 * D.n_source)
          kids.push(el("p", {class: "dup-warning", text: "The " + c + " check alone flags " +
            (100 * D.counts[c] / D.n_source).toFixed(1) + "% of the source: implausible for most sources. Look at the pairs below" +
            (c === "exact" ? "; does the source contain the target itself?" : " and raise its threshold" +
             (c === "feature" ? ", use a stronger model, or run without the feature check." : "."))}));
      }
      const t = el("table", {class: "dup-table", id: D === DATA.duplicates[0] ? "duplicates-table" : null});
      t.append(el("tr", {}, ...["source", "target", "similarity", "check", "threshold", "ids"].map(h => el("th", {text: h}))));
      for (const p of D.pairs) {
        t.append(el("tr", {class: "pair"}, el("td", {}, img(p.source_thumb, "dup-source", "source " + p.id)),
          el("td", {}, img(p.target_thumb, "dup-target", "target " + p.target_id)),
          el("td", {class: "sim", text: num(p.similarity)}), el("td", {text: p.match}),
          el("td", {text: p.threshold === null ? "-" : num(p.threshold)}), el("td", {text: p.id + " / " + p.target_id})));
      }
      kids.push(t);
      if (D.total > D.pairs.length) kids.push(el("p", {class: "muted", text: "showing " + D.pairs.length + " of " + D.total + " (datl report --pairs)"}));
      if (D.calibration) kids.push(el("img", {src: D.calibration, class: "plot", alt: "calibration histogram"}));
    }
    app.append(section("duplicates", "Duplicates of target images", ...kids));
  }

  // -- timings ------------------------------------------------------------------
  navLink("timings", "Timings");
  const tt = el("table", {id: "timings-table"});
  tt.append(el("tr", {}, el("th", {text: "stage"}), el("th", {text: "kind"}), el("th", {text: "seconds"})));
  let total = 0;
  for (const s of DATA.timings) {
    total += s.seconds || 0;
    tt.append(el("tr", {}, el("td", {text: s.stage}), el("td", {text: s.kind}), el("td", {text: num(s.seconds, 3)})));
  }
  tt.append(el("tr", {}, el("th", {text: "total"}), el("td", {}), el("th", {text: num(total, 4)})));
  app.append(section("timings", "Stage timings", tt));
  document.body.setAttribute("data-ready", "1");
})();

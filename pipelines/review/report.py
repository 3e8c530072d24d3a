"""``report.html``: one self-contained page per pipeline run (no network fetches; images inline).

Built from the finished stage folders alone, so the page MLflow shows on the parent
run and the one ``medflow report`` writes are the same document.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import json
from pathlib import Path

from medflow.review.spec import verdict

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1d2430;max-width:1400px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
.muted{color:#667085;font-size:13px} .verdict{padding:10px 14px;border-radius:6px;margin:14px 0;font-weight:600}
.win{background:#e7f6ec;border:1px solid #9fd6b0} .loss{background:#fdecec;border:1px solid #f0a8a8}
.none{background:#f1f3f7;border:1px solid #d0d5dd}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #dde2ea;padding:4px 8px;text-align:right}
th{background:#f5f7fa;cursor:pointer;user-select:none} td:first-child,th:first-child{text-align:left}
th.asc::after{content:" \\25B2"} th.desc::after{content:" \\25BC"}
img{max-width:100%;border:1px solid #dde2ea;margin:6px 0} code,pre{background:#f5f7fa;padding:2px 4px;font-size:12px}
pre{padding:8px;overflow:auto;max-height:420px} details{margin:8px 0}
"""

# Sorts a table on a header click (numbers numerically, the rest as text); no library, no network.
SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function(h){ h.classList.remove('asc', 'desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      rows.sort(function(a, b){
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        var nx = parseFloat(x), ny = parseFloat(y), both = !isNaN(nx) && !isNaN(ny);
        var c = both ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def _e(value) -> str:
    return html.escape(str(value))


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return f'<p class="muted">{_e(alt)}: not written</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img id="{_e(Path(alt).stem)}" alt="{_e(alt)}" src="data:image/png;base64,{data}"></figure>'


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_html(rows: list[dict], table_id: str, sortable: bool = True) -> str:
    """A table of flat dicts; every cell keeps its raw value in ``data-v`` for sorting."""
    if not rows:
        return '<p class="muted">no rows</p>'
    keys = list(rows[0])
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f'<td data-v="{_e(r.get(k, ""))}">{_e(_fmt(r.get(k, "")))}</td>' for k in keys)
                   + "</tr>" for r in rows)
    cls = ' class="sortable"' if sortable else ""
    return f'<table id="{_e(table_id)}"{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def read_table(path: Path) -> list[dict]:
    """A CSV as dicts, numbers as floats (so they sort and print as numbers)."""
    if not path.exists():
        return []
    rows = []
    for row in csv.DictReader(io.StringIO(path.read_text())):
        parsed = {}
        for k, v in row.items():
            try:
                parsed[k] = float(v) if v not in ("", None) else ""
            except ValueError:
                parsed[k] = v
        rows.append(parsed)
    return rows


def _find(outputs: dict, key: str):
    found = [o for o in outputs.values() if key in o.manifest]
    return found[0] if found else None


def _headline(review: dict) -> str:
    rows = []
    for m in review.get("metrics", []):
        base = m["baseline"]
        rows.append({"metric": m["name"], "network": m["value"],
                     review.get("baseline") or "baseline": "" if base is None else base,
                     "difference": "" if base is None else m["value"] - base,
                     "better": "higher" if m["greater_is_better"] else "lower"})
    return table_html(rows, "headline", sortable=False)


def _data_section(outputs: dict) -> str:
    parts = []
    ingest = outputs.get("ingest")
    if ingest is not None:
        info = ingest.manifest.get("dataset", {})
        parts.append(f"<p>dataset <b>{_e(info.get('name', '?'))}</b> ({_e(info.get('layout', ''))}, "
                     f"{_e(info.get('task', ''))}) at <code>{_e(info.get('root', ''))}</code>: "
                     f"{len(ingest.cases)} cases, {len(ingest.quarantine)} quarantined</p>")
        fp_path = ingest.file("fingerprint.json")
        if fp_path.exists():
            fp = json.loads(fp_path.read_text())
            rows = [{"fingerprint": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                    for k, v in fp.items() if k in ("n_cases", "class_counts", "spacing_ras", "shape", "axcodes",
                                                    "modalities", "label_counts", "channels")]
            parts.append(table_html(rows, "fingerprint", sortable=False))
        if ingest.quarantine:
            parts.append("<details><summary>quarantined cases</summary><pre>"
                         + _e("\n".join(f"{q.get('case_id')}: {q.get('error')}" for q in ingest.quarantine))
                         + "</pre></details>")
    return "".join(parts) or '<p class="muted">no ingest stage in this run</p>'


def _plan_section(outputs: dict, config_yaml: str | None) -> str:
    parts = []
    pre = outputs.get("preprocess")
    if pre is not None and "plan" in pre.manifest:
        parts.append("<p>preprocessing: " + ", ".join(f"{_e(k)} <code>{_e(v)}</code>"
                                                      for k, v in sorted(pre.manifest["plan"].items())) + "</p>")
    train = _find(outputs, "inference_model")
    if train is not None and train.file("plan.json").exists():
        plan = json.loads(train.file("plan.json").read_text())
        brief = {k: plan[k] for k in ("family", "model", "channels", "classes", "input_shape", "window")
                 if k in plan}
        parts.append(f"<details open><summary>inference plan (train stage)</summary><pre>"
                     f"{_e(json.dumps(brief, indent=1))}</pre></details>")
    if config_yaml:
        parts.append(f"<details><summary>pipeline configuration (resolved)</summary><pre>{_e(config_yaml)}"
                     f"</pre></details>")
    return "".join(parts) or '<p class="muted">no plan</p>'


def _model_section(outputs: dict) -> str:
    export = outputs.get("export")
    if export is None:
        return '<p class="muted">no export stage in this run</p>'
    reg = export.manifest.get("registry")
    lines = [f"<p>bundle: <code>{_e(export.path)}</code></p>"]
    if reg:
        lines.append(f"<p>registered model <b id=\"registry-name\">{_e(reg['name'])}</b> version "
                     f"<b>{_e(reg['version'])}</b>; alias <code>champion</code> "
                     f"{'moved to it' if reg.get('champion') else 'kept on an earlier version'} "
                     f"({_e(reg.get('comparison', ''))})</p>")
        lines.append(f"<pre>medflow predict --model models:/{_e(reg['name'])}@champion --input DIR --output DIR\n"
                     f"medflow predict --model models:/{_e(reg['name'])}/{_e(reg['version'])} --input DIR "
                     f"--output DIR</pre>")
    else:
        lines.append(f"<pre>medflow predict --model {_e(export.path)} --input DIR --output DIR</pre>")
    return "".join(lines)


def build_report(title: str, outputs: dict, *, description: str = "", config_yaml: str | None = None,
                 run_id: str | None = None) -> str:
    """The page for one pipeline run.

    Args:
        title: the run's label (``segmentation · unet2d · fold 0``).
        outputs: stage name -> StageOutput of the finished stages.
        config_yaml: the resolved pipeline configuration.
        run_id: the MLflow parent run, if any.
    """
    ev = _find(outputs, "review")
    train = _find(outputs, "figures")
    review = ev.manifest["review"] if ev is not None else {}
    says = verdict(review) if review else "this run has no evaluate stage"
    tone = "none"
    if review and review.get("baseline") and review.get("metrics"):
        tone = "win" if says.startswith("the network beats") else "loss"
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="muted">{_e(description)} &middot; generated {dt.datetime.now().isoformat(timespec="seconds")}'
            + (f" &middot; MLflow run <code>{_e(run_id)}</code>" if run_id else "") + "</p>",
            f'<div class="verdict {tone}" id="verdict">{_e(says)}</div>']
    if review:
        body += [f"<h2>Headline ({_e(review['split'])})</h2>", _headline(review)]
        figures = review.get("figures", {})
        for name in ("confusion.png", "montage.png", "cases.png", "comparison.png", "explanations.png"):
            if name in figures:
                body += [f"<h2>{_e(Path(name).stem.replace('_', ' ').capitalize())}</h2>",
                         _img(ev.file(figures[name]), name)]
        if review.get("table"):
            body += [f"<h2>Per case ({_e(review['split'])}; click a column to sort)</h2>",
                     table_html(read_table(ev.file(review["table"])), "per-case")]
    if train is not None:
        for name in ("training_curves.png", "augmentation_preview.png"):
            if name in train.manifest["figures"]:
                body += [f"<h2>{_e(Path(name).stem.replace('_', ' ').capitalize())}</h2>",
                         _img(train.file(train.manifest["figures"][name]), name)]
    body += ["<h2>Data</h2>", _data_section(outputs), "<h2>Plan</h2>", _plan_section(outputs, config_yaml),
             "<h2>Model</h2>", _model_section(outputs)]
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}<script>{SCRIPT}</script></body></html>")

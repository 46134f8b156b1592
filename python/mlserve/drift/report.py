"""Writing a drift report: ``report.json`` (every statistic, the bins and shares) and
``report.html`` (headline, summary table, one plot per feature and for the prediction:
reference vs current shares per bin, PNGs embedded as data URIs, so the file stands alone).

matplotlib (the 'monitoring' extra) draws with the Agg backend; nothing here touches a display.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from mlserve.drift.analysis import FeatureDrift
from mlserve.drift.offline import TableReport

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.name { text-align: left; font-weight: 600; }
tr.drift td { background: #fde2e2; } tr.none td { color: #888; }
.badge { padding: 0.2em 0.6em; border-radius: 0.3em; color: white; }
.bad { background: #c0392b; } .good { background: #27ae60; } .unknown { background: #888; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } .plots figure { margin: 0; }
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def plot_feature(f: FeatureDrift) -> bytes:
    """A PNG: reference vs current share per bin of one feature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(f.bins))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(f.bins) + 2.0), 3.0), dpi=90)
    ax.bar(x - 0.2, f.reference_shares, width=0.4, label="reference", color="#7f8c8d")
    ax.bar(x + 0.2, f.current_shares, width=0.4, label="current",
           color="#c0392b" if f.drifted else "#2980b9")
    ax.set_xticks(x)
    ax.set_xticklabels(f.bins, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share")
    verdict = "drift" if f.drifted else "no drift" if f.drifted is not None else "too few rows"
    ax.set_title(f"{f.name}: {f.test} = {_fmt(f.value)} ({verdict})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def _row(f: FeatureDrift) -> str:
    css = "drift" if f.drifted else "none" if f.drifted is None else ""
    missing = f"{_fmt(f.reference_missing_rate, 3)} → {_fmt(f.missing_rate, 3)}"
    cells = [f.kind, f.test, _fmt(f.value), _fmt(f.threshold), _fmt(f.drifted),
             f"{_fmt(f.psi)} ({f.psi_level})", _fmt(f.js), _fmt(f.ks_pvalue),
             _fmt(f.wasserstein), _fmt(f.chi2_pvalue), missing, _fmt(f.out_of_range_rate, 3),
             _fmt(f.unseen_rate, 3), html.escape(", ".join(f.quality_issues)) or "–"]
    return (f'<tr class="{css}"><td class="name">{html.escape(f.name)}</td>'
            + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")


_HEADER = ("feature", "kind", "test", "value", "threshold", "drift", "PSI", "JS", "KS p",
           "Wasserstein", "χ² p", "missing (ref → cur)", "out of range", "unseen",
           "data quality")


def render_html(report: TableReport) -> str:
    """The standalone HTML page of ``report``."""
    d = report.drift
    if d.dataset_drift is None:
        badge = '<span class="badge unknown">too few rows to judge</span>'
    elif d.dataset_drift:
        badge = '<span class="badge bad">dataset drift</span>'
    else:
        badge = '<span class="badge good">no dataset drift</span>'
    features = list(d.features.values())
    rows = [_row(f) for f in features]
    if d.prediction is not None:
        rows.append(_row(d.prediction))
    plots = []
    for f in [*features, *([d.prediction] if d.prediction is not None else [])]:
        png = base64.b64encode(plot_feature(f)).decode()
        plots.append(f'<figure><img alt="{html.escape(f.name)}" '
                     f'src="data:image/png;base64,{png}"></figure>')
    metrics = ""
    if report.current_metrics:
        keys = [k for k in report.current_metrics if k in report.reference_metrics]
        metrics = ("<h2>Model quality</h2><table><tr><th>metric</th><th>reference (held-out)"
                   "</th><th>this table</th></tr>" + "".join(
                       f'<tr><td class="name">{html.escape(k)}</td>'
                       f"<td>{_fmt(report.reference_metrics.get(k))}</td>"
                       f"<td>{_fmt(report.current_metrics.get(k))}</td></tr>" for k in keys)
                   + "</table>")
    share = _fmt(d.drift_share, 3)
    drifted = ", ".join(d.drifted_features) or "none"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Drift report: {html.escape(report.model)}</title>
<style>{_CSS}</style></head><body>
<h1>Drift report: {html.escape(report.model)}/{html.escape(report.version)}</h1>
<p>{badge} &nbsp; {html.escape(report.source)}: {d.rows:,} rows vs a reference of
{report.profile.rows:,} training rows. Drifted features: {html.escape(drifted)}
(share {share}).</p>
<h2>Summary</h2>
<table><tr>{"".join(f"<th>{h}</th>" for h in _HEADER)}</tr>{"".join(rows)}</table>
{metrics}
<h2>Distributions (reference vs current)</h2>
<div class="plots">{"".join(plots)}</div>
<p><small>Conventions: docs/monitoring.md. PSI on the reference bins plus a missing bin, empty
bins floored at 1e-4; JS natural log; KS p-value asymptotic; Wasserstein divided by the
reference standard deviation; χ² over the union of categories.</small></p>
</body></html>
"""


def write_report(report: TableReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Writes ``report.html`` and ``report.json`` into ``out_dir`` (created); returns them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out / "report.html", out / "report.json"
    json_path.write_text(json.dumps(report.to_dict(histograms=True), indent=2, allow_nan=False))
    html_path.write_text(render_html(report), encoding="utf-8")
    return html_path, json_path

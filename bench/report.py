"""Turns a scenario's result dict into a run record and writes it: JSON, Markdown and a PNG.

A scenario returns a dict with the keys of ``RESULT_KEYS``; ``make_record`` adds what every run
stores (scenario, level, timestamp, git commit, machine description, duration), ``write``
writes ``<out>/<scenario>-<stamp>.{json,md,png}``. Plots use matplotlib's Agg backend. Not
thread-safe (matplotlib's pyplot state).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine

#: Keys of a scenario's result dict. ``ratios`` maps a name to a positive float (mlserve over
#: the baseline measured in the same run; what "over" means is in the name); ``headline`` is
#: {"name", "value", "target" (optional), "lower_is_better" (optional), "meaning"};
#: ``tables`` are {"title", "columns", "rows"}; ``plots`` are {"title", "xlabel", "ylabel",
#: "x" (numbers: lines; strings: grouped bars), "series": {label: ys}, "logx", "logy"};
#: ``measurements`` are flat dicts with units in the keys.
RESULT_KEYS = (
    "parameters",
    "baseline",
    "measurements",
    "ratios",
    "headline",
    "tables",
    "plots",
    "notes",
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def utc_stamp(now: dt.datetime) -> str:
    """File-name timestamp, e.g. ``20250101T120000Z``."""
    return now.strftime("%Y%m%dT%H%M%SZ")


def make_record(
    scenario: str,
    summary: str,
    level: str,
    result: dict[str, Any],
    started: dt.datetime,
    duration_s: float,
) -> dict[str, Any]:
    """The full run record: metadata, machine description, then the scenario's result."""
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing:
        raise ValueError(f"scenario {scenario!r} returned no {', '.join(missing)}")
    return {
        "scenario": scenario,
        "summary": summary,
        "level": level,
        "timestamp": started.isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 3),
        "git": machine.git_commit(REPO_ROOT),
        "machine": machine.describe(),
        **result,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serializable: {type(obj).__name__}")


def _clean_floats(obj: Any) -> Any:
    """NaN/inf -> None, so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def to_json(record: dict[str, Any]) -> str:
    """The record as standard JSON (numpy scalars converted, non-finite floats as null)."""
    plain = json.loads(json.dumps(record, default=_jsonable))
    return json.dumps(_clean_floats(plain), indent=2, allow_nan=False) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        magnitude = abs(value)
        if magnitude == 0:
            return "0"
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def _md_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _machine_line(m: dict[str, Any]) -> str:
    mem = m.get("memory_bytes")
    mem_text = f"{mem / 2**30:.1f} GiB" if isinstance(mem, int) else "? GiB"
    v = m.get("versions", {})
    gpus = m.get("cuda_devices")
    gpu_text = ", ".join(str(d.get("name")) for d in gpus) if gpus else "none"
    return (
        f"{m.get('cpu_model')} ({m.get('usable_cores')}/{m.get('logical_cores')} cores), "
        f"{mem_text}, {m.get('os')}; python {v.get('python')}, numpy {v.get('numpy')}, "
        f"onnxruntime {v.get('onnxruntime')}, torch {v.get('torch')}, "
        f"mlserve {v.get('mlserve')}; GPUs: {gpu_text}; load avg {m.get('load_average')}"
    )


def render_markdown(record: dict[str, Any]) -> str:
    """The human summary of a run."""
    git = record["git"]
    commit = git.get("commit") or "no commit"
    if git.get("dirty"):
        commit += " (dirty)"
    head = record["headline"]
    target = head.get("target")
    lines = [
        f"# bench: {record['scenario']} ({record['level']})",
        "",
        record["summary"],
        "",
        f"- when: {record['timestamp']}, {record['duration_s']:.1f} s; commit: {commit}",
        f"- machine: {_machine_line(record['machine'])}",
        f"- baseline: {record['baseline']}",
        f"- parameters: `{json.dumps(record['parameters'], default=_jsonable)}`",
        "",
        f"**Headline: {head['name']} = {_fmt(head['value'])}**"
        + (
            f" (target {'≤' if head.get('lower_is_better') else '≥'} {target})"
            if target is not None
            else ""
        )
        + f" — {head['meaning']}",
        "",
    ]
    load = record["machine"].get("load_average")
    cores = record["machine"].get("usable_cores") or 1
    if load and load[0] > cores:
        lines += [
            f"> Warning: the machine was busy when the run started (1-min load average "
            f"{load[0]} on {cores} cores); absolute figures and ratios may be off.",
            "",
        ]
    for table in record["tables"]:
        lines += [f"## {table['title']}", ""]
        lines += _md_table(table["columns"], table["rows"])
        lines.append("")
    if record["notes"]:
        lines += ["## Notes", ""]
        lines += [f"- {note}" for note in record["notes"]]
        lines.append("")
    return "\n".join(lines)


def write_plots(record: dict[str, Any], path: Path) -> Path | None:
    """One PNG with a panel per plot of the record; ``None`` when it has no plots."""
    plots = record["plots"]
    if not plots:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One colour per series label across panels, so a series looks the same everywhere.
    labels = list(dict.fromkeys(label for plot in plots for label in plot["series"]))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, len(plots), figsize=(6.0 * len(plots), 4.5), squeeze=False)
    for ax, plot in zip(axes[0], plots, strict=True):
        xs = plot["x"]
        if any(isinstance(x, str) for x in xs):  # categories (operations, variants): bars
            width = 0.8 / max(1, len(plot["series"]))
            for i, (label, ys) in enumerate(plot["series"].items()):
                ax.bar([j + i * width for j in range(len(xs))], [y or 0 for y in ys], width,
                       label=label, color=color[label])
            ax.set_xticks([j + width * (len(plot["series"]) - 1) / 2 for j in range(len(xs))],
                          xs, fontsize="small")
        for label, ys in ([] if any(isinstance(x, str) for x in xs)
                          else plot["series"].items()):
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and y > 0]
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker="o",
                    label=label,
                    color=color[label],
                )
        if plot.get("hline") is not None:
            ax.axhline(plot["hline"], color="grey", linestyle="--", linewidth=1)
        if plot.get("logx"):
            ax.set_xscale("log", base=2)
        if plot.get("logy"):
            ax.set_yscale("log")
        ax.set_title(plot["title"])
        ax.set_xlabel(plot["xlabel"])
        ax.set_ylabel(plot["ylabel"])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{record['scenario']} ({record['level']}) {record['timestamp']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(record: dict[str, Any], out_dir: Path, stamp: str) -> dict[str, Path]:
    """Writes ``<scenario>-<stamp>.json/.md/.png`` under ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = f"{record['scenario']}-{stamp}"
    suffix = 1
    while (out_dir / f"{base}.json").exists():  # two runs in the same second
        suffix += 1
        base = f"{record['scenario']}-{stamp}-{suffix}"
    paths = {"json": out_dir / f"{base}.json", "markdown": out_dir / f"{base}.md"}
    png = write_plots(record, out_dir / f"{base}.png")
    if png is not None:
        paths["png"] = png
    record["files"] = {kind: p.name for kind, p in paths.items()}
    paths["markdown"].write_text(render_markdown(record))
    paths["json"].write_text(to_json(record))
    return paths


def print_markdown(text: str, plain: bool = False) -> None:
    """Prints the summary: rendered by rich when available (and not ``plain``), else as is."""
    if not plain:
        try:
            from rich.console import Console
            from rich.markdown import Markdown
        except ImportError:
            pass
        else:
            Console().print(Markdown(text))
            return
    print(text)

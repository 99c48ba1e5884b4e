"""The reproduction's outputs: the Table-I-style markdown table, figures (HTML, PNG) and the results JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from aff_app.workflows.metrics import ENERGY_UNIT, FORCE_UNIT


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------
def _f(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _pair(a, b, spec: str) -> str:
    return f"{_f(a, spec)} ({_f(b, spec)})"


def _percent(fraction, spec: str) -> str:
    """A fraction shown as a percent ("—" when unknown): PCI is a fraction everywhere else."""
    return "—" if fraction is None else f"{_f(100.0 * fraction, spec)}%"


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table in the paper's layout: AFF, with the sgdml package in parentheses; paper values beside."""
    head = ("| molecule | labels | M AFF (sgdml) | energy MAE | force MAE | train s | PCI(95%) | LCI(95%) "
            "| paper: M | energy MAE | force MAE | train s | PCI | LCI |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        p = r.get("paper") or {}
        lines.append(
            f"| {r['molecule']} | {r['label_set']} | {r['m_aff']} ({_f(r['m_sgdml'], 'd')}) "
            f"| {_pair(r['energy_mae_aff'], r['energy_mae_sgdml'], '.3f')} "
            f"| {_pair(r['force_mae_aff'], r['force_mae_sgdml'], '.3f')} "
            f"| {_pair(r['train_s_aff'], r['train_s_sgdml'], '.1f')} "
            f"| {_percent(r['pci_aff'], '.1f')} | {_f(r['lci_aff'], '.2f')} "
            f"| {p.get('m_aff', '—')} / {p.get('m_sgdml', '—')} "
            f"| {_pair(p.get('energy_mae_aff'), p.get('energy_mae_sgdml'), 'g')} "
            f"| {_pair(p.get('force_mae_aff'), p.get('force_mae_sgdml'), 'g')} "
            f"| {_pair(p.get('train_s_aff'), p.get('train_s_sgdml'), 'g')} "
            f"| {_percent(p.get('pci_aff'), 'g')} | {_f(p.get('lci_aff'), 'g')} |"
        )
    lines.append(f"\nunits: energy MAE {ENERGY_UNIT}, force MAE and LCI {FORCE_UNIT}, train time s; "
                 "values in parentheses: the sgdml package (— where not run)")
    for r in rows:
        if r.get("sgdml_note"):
            lines.append(f"\n{r['molecule']}/{r['label_set']}: sgdml: {r['sgdml_note']}")
    return "\n".join(lines)


def write_outputs(result: dict, out_dir, *, png: bool = True) -> dict:
    """Write the results JSON, the table (Markdown) and the Fig. 3 / Fig. 5 figures (HTML, PNG).

    Returns
    -------
    dict  {"results": path, "table": path, "figures": {name: {"html": path, "png": path or None}}}
    """
    from aff_app.figures import reproduce as fr

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict] = {}
    label_sets = result["settings"]["label_sets"]
    for ls in label_sets:
        pts = [p for p in result["points"] if p["label_set"] == ls]
        if not pts:
            continue
        for name, fig in (("fig3_learning_curves", fr.learning_curves_grid(pts, label_set=ls)),
                          ("fig5_uncertainty", fr.uncertainty_grid(pts, label_set=ls, level=result["settings"]["level"]))):
            stem = f"{name}_{ls}"
            html = out / f"{stem}.html"
            # one plotly.min.js beside the pages (offline, and not 4 MB inlined in every page)
            fig.write_html(str(html), include_plotlyjs="directory", full_html=True)
            png_path = None
            if png:
                png_path = out / f"{stem}.png"
                fr.write_png(fig, png_path)
            figures[stem] = {"html": str(html), "png": None if png_path is None else str(png_path)}
    table = out / "table_I.md"
    table.write_text(format_table(result["rows"]) + "\n", encoding="utf-8")
    results = out / "results.json"
    results.write_text(json.dumps({**result, "files": {"table": str(table), "figures": figures}}, indent=1,
                                  default=_json_default), encoding="utf-8")
    return {"results": str(results), "table": str(table), "figures": figures}


def append_point(path, point: dict) -> None:
    """Append one finished point to a JSON-lines file (one object per line), flushed at once."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(point, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")

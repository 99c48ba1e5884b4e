"""CLI command ``reproduce``: the paper's Table I, Fig. 3 and Fig. 5 on the MD17 data.

Registered with :func:`aff_app.cli.register` at import time (listed in
``aff_app.cli.COMMAND_MODULES``)::

    python -m aff_app reproduce [--quick] [--json] [--out-dir artifacts/reproduce]
                                [--molecules naphthalene benzene uracil aspirin] [--labels md17 rmd17]
                                [--no-peer] [--aff-m M] [--curve-m 200 400 800] [--peer-m M] ...
                                [--scheduler serial|local|local:N|tcp://host:8786]

The work is :func:`aff_app.reproduce.run.run_reproduction`; the files
(``results.json``, ``table_I.md``, Fig. 3 / Fig. 5 as HTML and PNG) are
written by :func:`aff_app.reproduce.output.write_outputs`. ``--quick`` starts from
:func:`aff_app.reproduce.settings.quick_settings`; options given explicitly override
it. ``--scheduler`` runs our fits as tasks on Dask (:mod:`aff_app.parallel`); each finished
point is appended to ``points.jsonl`` as it arrives. Without the optional ``sgdml`` package, a run that asks for it exits 2
with the install command; ``--no-peer`` runs without it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from aff_app.cli import CLIError, add_scheduler_argument, register

__all__: list[str] = []

#: Options mapped one to one onto ReproduceSettings fields (dest -> field); None = not given.
_FIELDS = {
    "molecules": "molecules", "labels": "label_sets", "data_dir": "data_dir", "n_test": "n_test",
    "n_valid": "n_valid", "eval_frames": "eval_frames", "seed": "seed", "aff_m": "aff_m",
    "aff_time_limit": "aff_time_limit_s", "curve_m": "curve_m", "baseline_modes": "baseline_modes",
    "baseline_m": "baseline_m", "baseline_time_limit": "baseline_time_limit_s", "peer_m": "peer_m",
    "peer_curve_m": "peer_curve_m", "peer_labels": "peer_label_sets", "peer_timeout": "peer_timeout_s",
    "peer_sigmas": "peer_sigmas", "gamma": "gamma", "lam": "lam", "energy_gamma": "energy_gamma",
    "energy_lam": "energy_lam", "search_frames": "search_frames", "baseline_search_frames": "baseline_search_frames",
}


def _add_reproduce(p: argparse.ArgumentParser) -> None:
    from aff_app.reproduce.md17 import LABEL_SETS, MOLECULES  # not .reproduce: the parser is built for every command

    p.add_argument("--quick", action="store_true",
                   help="a short run (< 10 min on 2 cores): AFF at M = 100 and 50, our sGDML mode at 50 (GDML where "
                        "the group is trivial), the sgdml package at M = 50 on the md17 labels, 500 of the 2000 "
                        "test frames")
    p.add_argument("--out-dir", default="artifacts/reproduce", help="folder for results.json, table_I.md and "
                   "the figures (default artifacts/reproduce)")
    p.add_argument("--molecules", nargs="+", default=None, metavar="MOL",
                   help=f"molecules (default: {' '.join(MOLECULES)})")
    p.add_argument("--labels", nargs="+", default=None, choices=LABEL_SETS,
                   help="label sets: md17 (original MD17 labels, the paper's) and/or rmd17 (default: both)")
    p.add_argument("--data-dir", default=None, help="folder of <molecule>.npz (default ../shared/data/md17)")
    p.add_argument("--no-peer", action="store_true", help="do not run the sgdml package")
    p.add_argument("--no-png", action="store_true", help="write the figures as HTML only")
    add_scheduler_argument(p)
    g = p.add_argument_group("split and sizes")
    g.add_argument("--seed", type=int, default=None, help="seed of the split (default 0)")
    g.add_argument("--n-test", type=int, default=None, help="held-out test frames (default 2000)")
    g.add_argument("--n-valid", type=int, default=None, help="validation frames for sgdml's σ choice (default 200)")
    g.add_argument("--eval-frames", type=int, default=None,
                   help="evaluate on this many of the test frames (default all; --quick 500)")
    g.add_argument("--aff-m", type=int, default=None,
                   help="AFF's table M (default: the paper's, or the largest that fits --aff-time-limit)")
    g.add_argument("--aff-time-limit", type=float, default=None,
                   help="limit (s) on the estimated time of one AFF fit plus test prediction (default 3600)")
    g.add_argument("--curve-m", type=int, nargs="*", default=None, help="further AFF sizes (default 200 400 800)")
    g.add_argument("--baseline-modes", nargs="*", default=None, choices=("gdml", "sgdml"),
                   help="our full-covariance modes (default gdml sgdml; none: give the flag alone)")
    g.add_argument("--baseline-m", type=int, nargs="*", default=None, help="their sizes (default 100 200 400)")
    g.add_argument("--baseline-time-limit", type=float, default=None,
                   help="skip GDML/sGDML sizes estimated above this (s, default 900)")
    g = p.add_argument_group("the sgdml package")
    g.add_argument("--peer-m", type=int, default=None,
                   help="its table M (default: the paper's 1000, or the largest that fits memory and --peer-timeout)")
    g.add_argument("--peer-curve-m", type=int, nargs="*", default=None,
                   help="smaller sizes run first; the largest finished one calibrates the time estimate (default 200)")
    g.add_argument("--peer-labels", nargs="+", default=None, choices=("md17", "rmd17"),
                   help="label sets it runs on (default: all of --labels; --quick: md17)")
    g.add_argument("--peer-timeout", type=float, default=None, help="limit of one `sgdml all` run (s, default 1800)")
    g.add_argument("--peer-sigmas", default=None, help="its σ grid, e.g. '2:2:40' (default: its own 10:10:100)")
    g = p.add_argument_group("hyperparameters (default: profile likelihood)")
    g.add_argument("--gamma", type=float, default=None, help="fix the force kernel's range γ (1/Å)")
    g.add_argument("--lam", type=float, default=None, help="fix the force nugget λ")
    g.add_argument("--energy-gamma", type=float, default=None, help="fix the energy kernel's range γ")
    g.add_argument("--energy-lam", type=float, default=None, help="fix the energy nugget λ")
    g.add_argument("--search-frames", type=int, default=None, help="fewest frames of AFF's force hyperparameter "
                   "search; it uses max(this, M/4) (default 100; --quick 50)")
    g.add_argument("--baseline-search-frames", type=int, default=None,
                   help="frames of the GDML/sGDML searches (default: --search-frames; --quick 20)")


def _settings(args):
    from aff_app.reproduce.settings import ReproduceSettings, quick_settings

    given = {}
    for dest, fld in _FIELDS.items():
        val = getattr(args, dest, None)
        if val is not None:
            given[fld] = tuple(val) if isinstance(val, list) else val
    if args.no_peer:
        given["peer"] = False
    return quick_settings(**given) if args.quick else ReproduceSettings(**given)


def _run_reproduce(args) -> dict:
    from aff_app.parallel import open_executor, parse_scheduler
    from aff_app.reproduce.output import append_point, write_outputs
    from aff_app.reproduce.run import run_reproduction

    settings = _settings(args)
    choice = parse_scheduler(args.scheduler)  # a bad --scheduler fails before any work
    out_dir = Path(args.out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"--out-dir {str(out_dir)!r} exists and is not a folder")
    last = [""]

    def progress(fraction: float, message: str = "") -> None:
        if not args.json and message != last[0]:
            last[0] = message
            print(f"\r{100 * fraction:5.1f}% {message[:90]:<90}", end="", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / "points.jsonl"  # every finished point, as it arrives: kept if the run stops early
    partial.write_text("", encoding="utf-8")
    try:
        with open_executor(choice) as executor:
            choice = executor.choice  # as started: the workers and memory limit it chose
            result = run_reproduction(settings, progress=progress, executor=executor,
                                      workdir=out_dir / "sgdml_work" if settings.peer else None,
                                      on_point=lambda pt: append_point(partial, pt))
    finally:
        if not args.json:
            print(file=sys.stderr)
    files = write_outputs(result, out_dir, png=not args.no_png)
    wall = time.perf_counter() - t0
    choices = {mol: {k: c.get(k) for k in ("m_aff", "m_aff_reason", "aff_curve_m", "m_sgdml", "m_sgdml_reason",
                                           "n_atoms", "n_perms", "pe_set_sizes")}
               for mol, c in result["choices"].items()}
    return {
        "quick": settings.quick,
        "rows": result["rows"],
        "points": result["points"],
        "choices": choices,
        "skipped": result["skipped"],
        "settings": result["settings"],
        "labels": result["labels"],
        "units": result["units"],
        "notes": result["notes"],
        "files": {**files, "points": str(partial)},
        "figures": {k: v for k, v in files["figures"].items()},
        "scheduler": choice.to_dict(),
        "wall_s": wall,
    }


def _render_reproduce(r: dict) -> str:
    from aff_app.reproduce.output import format_table

    lines = [("Quick reproduction" if r["quick"] else "Reproduction") + " of the paper's Table I "
             "(AFF, with the sgdml package in parentheses; the paper's values beside)", "",
             format_table(r["rows"]), "", "sizes used and why:"]
    for mol, c in r["choices"].items():
        lines.append(f"  {mol}: AFF M = {c['m_aff']} — {c['m_aff_reason']}; learning curve M = {c['aff_curve_m']}")
        lines.append(f"  {mol}: sgdml M = {c['m_sgdml'] if c['m_sgdml'] is not None else '—'} — {c['m_sgdml_reason']}")
    notes = [row for row in r["rows"] if row.get("sgdml_note")]
    for row in notes:
        lines.append(f"  {row['molecule']}/{row['label_set']}: sgdml: {row['sgdml_note']}")
    if r["skipped"]:
        lines.append("not run:")
        for k in r["skipped"]:
            m = f" M = {k['M']}" if "M" in k else ""
            lines.append(f"  {k['molecule']}/{k['label_set']} {k['method']}{m}: {k['reason']}")
    lines.append("")
    lines.append(f"results: {r['files']['results']}")
    lines.append(f"table: {r['files']['table']}")
    for name, f in r["figures"].items():
        lines.append(f"{name}: {f['html']}" + (f", {f['png']}" if f.get("png") else ""))
    lines.append(f"wall time: {r['wall_s']:.0f} s")
    return "\n".join(lines)


register("reproduce", "reproduce the paper's Table I, Fig. 3 and Fig. 5 on the MD17 data (AFF, GDML/sGDML, "
         "the sgdml package)", _add_reproduce, _run_reproduce, render=_render_reproduce)

"""CLI command ``design``: uncertainty-driven sequential design against random selection.

    python -m aff_app design DATA [--model aff] [--initial 20] [--batch 20] [--budget 400] [--test 1000]
                                  [--seed 0] [--strategies variance,random] [--label-source file|xtb]
                                  [--hyper doubling|every] [--score sum|max|normalised|alc] [--candidates K]
                                  [--energy] [--out chosen.csv] [--json]

DATA's frames are the pool (:func:`aff_app.workflows.design.run_design`). ``--label-source file``
(default when DATA has forces) labels chosen frames with the file's own labels; ``--label-source xtb``
computes GFN2-xTB labels for the chosen and the test frames only, ignoring any labels in DATA (the
option is not ``--labels``: that one names the file's label set, as for every data command).
``--json``: one object with the rows, the chosen frames and the answer (``reached``: the frames
variance selection needed to reach random selection's force MAE at the budget). Ctrl-C keeps the
finished rounds.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from aff_app.cli import CLIError, add_data_arguments, load_from_args, register
from aff_app.cli.model import _end_progress, _progress_printer

__all__: list[str] = []

#: Test frames by default: a file's labels are free, GFN2-xTB labels cost a calculation each.
DEFAULT_TEST = {"file": 1000, "xtb": 200}


def _add_design(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--model", default="aff", help="force GP: aff (default), gdml or sgdml (a mode with variances)")
    p.add_argument("--initial", type=int, default=20, help="M0, random frames every strategy starts from (default 20)")
    p.add_argument("--batch", type=int, default=20, help="frames added per round (default 20)")
    p.add_argument("--budget", type=int, default=400, help="M_max, training frames of the last round (default 400)")
    p.add_argument("--test", type=int, default=None,
                   help="held-out frames, never chosen (default 1000; 200 with --label-source xtb)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, random picks and fits (default 0)")
    p.add_argument("--strategies", default="variance,random", help="comma-separated: variance, random (default both)")
    p.add_argument("--label-source", choices=("file", "xtb"), default=None,
                   help="label chosen frames from the file (default when it has forces) or with GFN2-xTB")
    p.add_argument("--hyper", choices=("doubling", "every"), default="doubling",
                   help="search γ, λ when M has doubled since the last search (default) or at every refit")
    p.add_argument("--score", choices=("sum", "max", "normalised", "alc"), default="sum",
                   help="variance score of a frame (default: sum of the force variances)")
    p.add_argument("--candidates", type=int, default=None, help="candidates scored per round (default: the whole pool)")
    p.add_argument("--energy", action="store_true", help="fit the energy model every round too (energy MAE)")
    p.add_argument("--out", default=None, help="write the chosen frames as CSV here")


def _run_design(args) -> dict:
    from aff_app.workflows.design import (DesignSettings, FileLabels, XTBLabels, chosen_csv, frames_to_reach,
                                          run_design)

    out = None
    if args.out:
        out = Path(args.out).expanduser()
        if not out.parent.exists():
            raise FileNotFoundError(f"the output folder {str(out.parent)!r} does not exist")
    traj = load_from_args(args)
    source = args.label_source or ("file" if traj.F is not None else "xtb")
    strategies = tuple(s.strip() for s in str(args.strategies).split(",") if s.strip())
    settings = DesignSettings(
        mode=args.model, n_initial=args.initial, batch=args.batch, budget=args.budget,
        n_test=DEFAULT_TEST[source] if args.test is None else args.test, seed=args.seed, strategies=strategies,
        hyper=args.hyper, score=args.score, n_candidates=args.candidates, energy=args.energy)
    if source == "file" and traj.F is None:
        raise CLIError(f"{Path(str(args.data)).name!r} has no forces: label the chosen frames with GFN2-xTB "
                       "(--label-source xtb)")
    labels = FileLabels(traj) if source == "file" else XTBLabels(traj.z, traj.R)
    progress = _progress_printer(args)
    stop = {"asked": False}
    previous = None
    if threading.current_thread() is threading.main_thread():
        def interrupt(signum, frame):  # pragma: no cover - interactive
            # the first Ctrl-C ends the run after its last finished round (kept); a second one aborts
            stop["asked"] = True
            signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = signal.signal(signal.SIGINT, interrupt)
    try:
        result = run_design(traj, labels, settings, progress=progress, should_stop=lambda: stop["asked"])
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        _end_progress(args)
    if out is not None:
        out.write_text(chosen_csv(result), encoding="utf-8")
    reached = frames_to_reach(result) if {"variance", "random"} <= set(settings.strategies) else None
    return {"data_path": str(args.data), "formula": traj.formula, "label_source": result.label_source,
            "settings": settings.to_dict(), "n_frames": result.n_frames, "n_labelled": result.n_labelled,
            "stopped_early": result.stopped_early, "elapsed_s": result.elapsed_s, "label_s": result.label_s,
            "rows": [r.to_dict() for r in result.rows], "chosen": [c.to_dict() for c in result.chosen],
            "test_idx": result.test_idx.tolist(), "reached": None if reached is None else reached.to_dict(),
            "chosen_csv": None if out is None else str(out),
            "units": {"force_mae": "kcal/mol/Å", "energy_mae": "kcal/mol", "score": "(kcal/mol/Å)²", "time": "s"}}


def _render_design(r: dict) -> str:
    s = r["settings"]
    lines = [f"Sequential design on {r['formula']}: {r['n_frames']} frames, {s['n_test']} held out, M0 = "
             f"{s['n_initial']}, batch {s['batch']}, budget {s['budget']} ({s['mode']}, labels: {r['label_source']}, "
             f"{r['n_labelled']} frames labelled, {r['elapsed_s']:.0f} s)",
             f"{'strategy':<9} {'round':>5} {'M':>5} {'force MAE':>10} {'PCI':>6} {'fit s':>6} {'select s':>8}"]
    for row in r["rows"]:
        pci = "—" if row["pci"] is None else f"{row['pci']:.3f}"
        lines.append(f"{row['strategy']:<9} {row['round']:>5} {row['M']:>5} {row['force_mae']:>10.4f} {pci:>6} "
                     f"{row['fit_s']:>6.1f} {row['select_s']:>8.1f}")
    if r["reached"]:
        lines.append(r["reached"]["sentence"])
    if r["stopped_early"]:
        lines.append(f"stopped early: {r['stopped_early']}")
    if r["chosen_csv"]:
        lines.append(f"chosen frames written to {r['chosen_csv']}")
    return "\n".join(lines)


register("design", "sequential design: add the frames of largest force variance, against random selection",
         _add_design, _run_design, render=_render_design)

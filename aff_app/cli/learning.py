"""CLI command ``curve``: a learning curve (accuracy, cost and intervals against M) of one data file.

Registered with :func:`aff_app.cli.register` at import time (listed in
``aff_app.cli.COMMAND_MODULES``)::

    python -m aff_app curve DATA [--models aff gdml] [--sizes 50 100 200] [--n-test 200] [--seed 0]
                                 [--gamma G] [--lam L] [--criterion likelihood|cv] [--no-energy]
                                 [--out rows.jsonl] [--scheduler serial|local|local:N|tcp://host:8786]

The work is :func:`aff_app.workflows.learning.learning_curve`; with ``--scheduler`` its
points run as Dask tasks (:mod:`aff_app.parallel`), with the same rows in the same order.
``--out`` receives every finished row as it arrives (JSON lines), so an interrupted run
keeps its finished points.
"""

from __future__ import annotations

import argparse
import json
import sys

from aff_app.cli import add_data_arguments, add_scheduler_argument, load_from_args, register

__all__: list[str] = []


def _add_curve(p: argparse.ArgumentParser) -> None:
    from aff_app.workflows.kinds import ALL_MODES

    add_data_arguments(p)
    p.add_argument("--models", nargs="+", default=["aff"], choices=ALL_MODES, help="models (default aff)")
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200], help="training sizes M (default 50 100 200)")
    p.add_argument("--n-test", type=int, default=200, help="held-out test frames, the same for every point (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the searches (default 0)")
    p.add_argument("--gamma", type=float, default=None, help="fix the force kernel's range γ (1/Å)")
    p.add_argument("--lam", type=float, default=None, help="fix the force nugget λ")
    p.add_argument("--criterion", choices=("likelihood", "cv"), default="likelihood",
                   help="hyperparameter criterion (default likelihood)")
    p.add_argument("--no-energy", action="store_true", help="forces only (no energy model)")
    p.add_argument("--symmetry-frames", type=int, default=200, help="frames sampled by the symmetry search (default 200)")
    p.add_argument("--out", default=None, help="write every finished row, as it arrives, to this JSON-lines file")
    add_scheduler_argument(p)


def _run_curve(args) -> dict:
    from aff_app.parallel import open_executor, parse_scheduler
    from aff_app.symmetry import detect_symmetry
    from aff_app.workflows.kinds import uses_symmetry
    from aff_app.workflows.learning import learning_curve

    choice = parse_scheduler(args.scheduler)  # a bad --scheduler fails before any work
    traj = load_from_args(args)
    sym = None
    if any(uses_symmetry(m) for m in args.models):
        sym = detect_symmetry(traj.R, traj.z, n_samples=min(args.symmetry_frames, traj.n_frames), seed=args.seed)
    written = [0]

    def keep(rows: list) -> None:
        # rows arrive in the order of the curve: append those finished since the last call
        if args.out is None:
            return
        done = [r for r in rows if r["status"] not in ("pending",)]
        with open(args.out, "a", encoding="utf-8") as fh:
            for r in done[written[0]:]:
                fh.write(json.dumps(r) + "\n")
        written[0] = len(done)

    def progress(fraction: float, message: str = "") -> None:
        if not args.json:
            print(f"\r{100 * fraction:5.1f}% {message[:90]:<90}", end="", file=sys.stderr, flush=True)

    if args.out is not None:
        open(args.out, "w", encoding="utf-8").close()
    try:
        with open_executor(choice) as executor:
            choice = executor.choice  # as started: the workers and memory limit it chose
            rows = learning_curve(traj, args.models, args.sizes, n_test=args.n_test, seed=args.seed, symmetry=sym,
                                  gamma=args.gamma, lam=args.lam, criterion=args.criterion,
                                  with_energy=not args.no_energy, progress=progress, on_point=keep, executor=executor)
    finally:
        if not args.json:
            print(file=sys.stderr)
    return {"rows": rows, "n_atoms": traj.n_atoms, "n_frames": traj.n_frames, "scheduler": choice.to_dict(),
            "out": args.out}


def _render_curve(r: dict) -> str:
    lines = [f"{'model':<14} {'M':>6} {'status':<11} {'force MAE':>10} {'energy MAE':>10} {'PCI':>6} {'train s':>8}"]
    for row in r["rows"]:
        f = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"{row['model']:<14} {row['M']:>6} {row['status']:<11} {f(row['force_mae'], '.4f'):>10} "
                     f"{f(row['energy_mae'], '.4f'):>10} {f(row['pci'], '.3f'):>6} {f(row['train_s'], '.1f'):>8}")
        if row["note"]:
            lines.append(f"    {row['note']}")
    lines.append("units: force MAE kcal/mol/Å, energy MAE kcal/mol; scheduler: " + r["scheduler"]["description"])
    return "\n".join(lines)


register("curve", "learning curve of a data file: force/energy error, intervals and cost against M (Fig. 3, 5)",
         _add_curve, _run_curve, render=_render_curve)

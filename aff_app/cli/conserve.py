"""CLI command ``conserve``: is a model's force field the gradient of an energy?

    python -m aff_app conserve DATA MODEL [MODEL ...] [--steps 1000] [--dt 0.5] [--temperature 300] [--frame K]

For each model file (any of ours: AFF, GDML, sGDML, the sgdml package, the DCF-style network) it runs
the three measurements of :mod:`aff_app.workflows.conservation` on every force field the model defines
(:func:`aff_app.workflows.force_fields.force_fields`: AFF also as the conservative −∇Ê of its
integrated energy): NVE drift (kcal/mol/ps) from frame K of DATA, the work around closed loops of
geometries (kcal/mol), and the asymmetry of the force Jacobian. ``--json``: one object with a row
per force field (the time series under ``reports``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aff_app.errors import AFFError
from aff_app.cli import CLIError, add_data_arguments, load_from_args, register
from aff_app.cli.model import _end_progress, _progress_printer

__all__: list[str] = []


def _add_conserve(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("models", metavar="MODEL", nargs="+", help="model files written by 'train' or the Train page (.npz)")
    p.add_argument("--steps", type=int, default=1000, help="velocity-Verlet steps of the NVE run (default 1000)")
    p.add_argument("--dt", type=float, default=0.5, help="time step, fs (default 0.5)")
    p.add_argument("--temperature", type=float, default=300.0, help="start temperature, K (default 300)")
    p.add_argument("--frame", type=int, default=None,
                   help="start frame of DATA (default: the first frame none of the models trained on)")
    p.add_argument("--seed", type=int, default=0, help="seed of the velocities and loop directions (default 0)")
    p.add_argument("--no-conservative", action="store_true",
                   help="do not add AFF's conservative field (−∇ of its integrated energy)")


def _run_conserve(args) -> dict:
    import numpy as np

    from aff_app.workflows import pipeline
    from aff_app.workflows.conservation import ConservationSettings, conservation_check
    from aff_app.figures.conservation import conservation_table
    from aff_app.workflows.force_fields import force_fields
    from aff_app.workflows.training import check_atoms_match, training_positions_mask

    traj = load_from_args(args)
    models = []
    for path in args.models:
        trained = pipeline.load(path)
        check_atoms_match(trained.force.z, traj.z, what=f"the data {Path(str(args.data)).name!r}")
        models.append((Path(path).stem, trained))
    if args.frame is None:
        free = np.ones(traj.n_frames, dtype=bool)
        for _, t in models:
            free &= ~training_positions_mask(t.force, traj)
        frame = int(np.flatnonzero(free)[0]) if free.any() else 0
    else:
        frame = int(args.frame)
        if not 0 <= frame < traj.n_frames:
            raise CLIError(f"--frame must lie in 0..{traj.n_frames - 1}, got {frame}")
    settings = ConservationSettings(temperature_K=args.temperature, dt_fs=args.dt, n_steps=args.steps, seed=args.seed)
    fields = [f for name, t in models for f in force_fields(name, t.force, t.energy, conservative=not args.no_conservative)]
    progress = _progress_printer(args)
    reports, failed = [], []
    try:
        for k, field in enumerate(fields):
            try:
                reports.append(conservation_check(
                    field.name, field.forces, field.z, traj.R[frame], energy=field.energy, settings=settings,
                    progress=lambda f, m, k=k, n=field.name: progress((k + f) / len(fields), f"{n}: {m}")))
            except AFFError as exc:  # one model's failure keeps the others' reports
                failed.append({"name": field.name, "error": str(exc)})
    finally:
        _end_progress(args)
    if not reports:
        raise CLIError("the conservation check failed for every model: "
                       + "; ".join(f"{f['name']}: {f['error']}" for f in failed))
    return {"data_path": str(args.data), "formula": traj.formula, "start_frame": frame,
            "settings": settings.to_dict(), "table": conservation_table(reports),
            "reports": [r.to_dict() for r in reports], "failed": failed,
            "units": {"drift": "kcal/mol/ps", "loop_work": "kcal/mol", "time": "ps"}}


def _render_conserve(r: dict) -> str:
    lines = [f"Conservation check on {r['formula']} from frame {r['start_frame']} "
             f"({r['settings']['n_steps']} steps of {r['settings']['dt_fs']} fs, {r['settings']['temperature_K']:g} K)"]
    head = f"{'force field':<34} {'potential':<14} {'drift kcal/mol/ps':>18} {'loop |W| kcal/mol':>18} " \
           f"{'loop W/gross':>13} {'J asymmetry':>12}"
    lines.append(head)

    def g(v, spec=".3g"):
        return "—" if v is None else format(v, spec)

    for row in r["table"]:
        lines.append(f"{row['model'][:34]:<34} {row['potential']:<14} {g(row['NVE drift (kcal/mol/ps)'], '+.3g'):>18} "
                     f"{g(row['loop work |W| (kcal/mol)']):>18} {g(row['loop work / gross work']):>13} "
                     f"{g(row['Jacobian asymmetry']):>12}" + (f"  (stopped: {row['stopped early']})"
                                                              if row["stopped early"] else ""))
    lines.extend(f"{f['name']}: failed — {f['error']}" for f in r.get("failed", []))
    return "\n".join(lines)


register("conserve", "NVE drift, closed-loop work and force-Jacobian asymmetry of model files (is F = −∇E?)",
         _add_conserve, _run_conserve, render=_render_conserve)

"""CLI command ``md``: molecular dynamics with a model file, its live force sd, and a GFN2-xTB reference.

    python -m aff_app md MODEL [--data DATA --frame K] [--ensemble nve|nvt] [--temperature 300] [--dt 0.5]
                         [--steps 2000] [--record-every 10] [--sd-threshold X] [--conservative]
                         [--reference xtb] [--out run.extxyz] [--json]

The start is frame K of DATA (default: the first frame the model did not train on) or, without
DATA, the model's first training frame. The run stops early when the largest force sd of a
recorded frame exceeds ``--sd-threshold`` (kcal/mol/Å) or the molecule falls apart; the frames
run so far are written either way (``--out``: extxyz with forces and ``forces_sd`` per atom, eV/Å).
``--reference xtb`` also runs GFN2-xTB from the same start and velocities and reports the
bond-length and energy distributions of both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aff_app.cli import CLIError, add_data_arguments, load_from_args, register
from aff_app.cli.model import _end_progress, _progress_printer

__all__: list[str] = []


def _add_md(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model file written by 'train' or the Train page (.npz)")
    p.add_argument("--data", default=None, help="trajectory to take the start frame from (default: the model's "
                                                "first training frame)")
    add_data_arguments(p, positional=False)
    p.add_argument("--frame", type=int, default=None,
                   help="start frame of --data (default: the first frame the model did not train on)")
    p.add_argument("--ensemble", choices=["nve", "nvt"], default="nve",
                   help="nve: velocity Verlet; nvt: Langevin thermostat (default nve)")
    p.add_argument("--temperature", type=float, default=300.0, help="start (and NVT target) temperature, K")
    p.add_argument("--dt", type=float, default=0.5, help="time step, fs (default 0.5)")
    p.add_argument("--steps", type=int, default=2000, help="MD steps (default 2000)")
    p.add_argument("--record-every", type=int, default=10,
                   help="keep a frame, its energy and force sd every this many steps (default 10)")
    p.add_argument("--sd-threshold", type=float, default=None,
                   help="stop when the largest force sd exceeds this, kcal/mol/Å (default: never)")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (NVT; default 0.01)")
    p.add_argument("--conservative", action="store_true",
                   help="forces −∇Ê of AFF's integrated energy instead of the force GP's mean")
    p.add_argument("--seed", type=int, default=0, help="seed of the velocities and the Langevin noise")
    p.add_argument("--reference", choices=["none", "xtb"], default="none",
                   help="also run GFN2-xTB from the same start and compare distributions (default none)")
    p.add_argument("--out", default=None, help="write the model run as extxyz (forces and forces_sd, eV/Å)")
    p.add_argument("--reference-out", default=None, help="write the reference run as extxyz")


def _start(args, trained) -> tuple:
    """(positions (N, 3) Å, description) of the start geometry."""
    import numpy as np

    from aff_app.workflows.training import check_atoms_match, training_positions_mask

    force = trained.force
    if args.data is None:
        if args.frame is not None:
            raise CLIError("--frame needs --data (the trajectory to take the frame from)")
        R = getattr(force, "R_train", None)
        if R is None or len(R) == 0:
            raise CLIError("this model file holds no training geometry: give --data and --frame")
        return np.asarray(R[0]), "the model's first training frame"
    traj = load_from_args(args, args.data)
    check_atoms_match(force.z, traj.z, what=f"the data {Path(str(args.data)).name!r}")
    if args.frame is None:
        free = np.flatnonzero(~training_positions_mask(force, traj))
        frame = int(free[0]) if free.size else 0
    else:
        frame = int(args.frame)
        if not 0 <= frame < traj.n_frames:
            raise CLIError(f"--frame must lie in 0..{traj.n_frames - 1}, got {frame}")
    return traj.R[frame], f"frame {frame} of {Path(str(args.data)).name}"


def _run_md(args) -> dict:
    from aff_app.workflows import pipeline
    from aff_app.workflows.kinds import MODE_LABELS
    from aff_app.workflows.md import (MDSettings, compare_runs, reference_settings, run_md, run_model_md,
                                      xtb_calculator)

    settings = MDSettings(ensemble=args.ensemble, temperature_K=args.temperature, timestep_fs=args.dt,
                          n_steps=args.steps, record_every=args.record_every, sd_threshold=args.sd_threshold,
                          friction_per_fs=args.friction, conservative=args.conservative, seed=args.seed)
    trained = pipeline.load(args.model)
    R0, where = _start(args, trained)
    mode = getattr(trained.force, "mode", "aff")
    label = f"{MODE_LABELS.get(mode, mode)} ({Path(args.model).stem})" + (" −∇Ê" if args.conservative else "")
    progress = _progress_printer(args)
    share = 0.5 if args.reference == "xtb" else 1.0
    try:
        run = run_model_md(trained.force, trained.energy, R0, settings, label=label,
                           progress=lambda f, m: progress(share * f, m))
        reference = None
        if args.reference == "xtb":
            reference = run_md(xtb_calculator(), trained.force.z, R0, reference_settings(settings), label="GFN2-xTB",
                               threads=1, progress=lambda f, m: progress(share + share * f, m))
    finally:
        _end_progress(args)
    if args.out:
        run.write_extxyz(args.out)
    if reference is not None and args.reference_out:
        reference.write_extxyz(args.reference_out)
    out = {"model_path": str(args.model), "start": where, "run": run.summary(), "out": args.out,
           "units": {"energy": "kcal/mol", "force_sd": "kcal/mol/Å", "time": "ps", "extxyz": "eV, Å"}}
    if reference is not None:
        cmp = compare_runs(run, reference)
        out["reference"] = reference.summary()
        out["bond_lengths"] = [vars(b) for b in cmp.by_kind]
        out["energy_fluctuation_sd"] = {"model": float(cmp.model_energy.std()) if cmp.model_energy.size else None,
                                        "reference": float(cmp.reference_energy.std())}
        out["speedup_vs_reference"] = reference.ms_per_step / run.ms_per_step
    return out


def _render_md(r: dict) -> str:
    run = r["run"]
    lines = [f"{run['label']}: {run['message']}",
             f"  start: {r['start']}; {run['frames']} frames recorded, {run['ms_per_step']:.2f} ms per step, "
             f"mean T {run['mean_temperature_K']:.0f} K"]
    if run["max_force_sd"] is not None:
        lines.append(f"  largest force sd: {run['max_force_sd']:.3g} kcal/mol/Å")
    drift = run["drift_kcal_mol_per_ps"]
    if drift is not None and drift == drift:  # NaN: NVT, no energy model, or a run that fell apart
        lines.append(f"  NVE drift of the total energy: {drift:+.3g} kcal/mol/ps")
    if "reference" in r:
        ref = r["reference"]
        lines.append(f"{ref['label']}: {ref['message']}")
        lines.append(f"  {ref['ms_per_step']:.2f} ms per step ({r['speedup_vs_reference']:.1f}× the model's time)")
        lines.append(f"  {'bond':<6} {'model mean ± sd (Å)':>22} {'reference mean ± sd (Å)':>26}")
        for b in r["bond_lengths"]:
            lines.append(f"  {b['kind']:<6} {b['model_mean']:>12.4f} ± {b['model_sd']:.4f} "
                         f"{b['reference_mean']:>16.4f} ± {b['reference_sd']:.4f}")
        e = r["energy_fluctuation_sd"]
        if e["model"] is not None:
            lines.append(f"  energy fluctuation sd: model {e['model']:.3g}, reference {e['reference']:.3g} kcal/mol")
    if r.get("out"):
        lines.append(f"wrote {r['out']}")
    return "\n".join(lines)


register("md", "molecular dynamics with a model file: NVE/NVT, live force sd, stop at an sd threshold, extxyz out",
         _add_md, _run_md, render=_render_md)

"""NVE energy drift with AFF's own forces and with its conservative forces (issue 15, item 2).

For each molecule: AFF at M frames of the reproduction's split (rMD17 labels by default) through
the one pipeline, with its integrated energy (method.md "AFF's energy"). From the same held-out
frame and the same Maxwell-Boltzmann velocities (300 K), ASE's velocity Verlet at 0.5 fs runs
``--ps`` picoseconds twice: with AFF's forces (the force model's mean: not the gradient of any
energy) and with the conservative forces −∇Ê. The total energy is the integrated energy plus the
kinetic energy in both runs; its drift is the slope of a straight-line fit, kcal/mol per ps, and its
spread the standard deviation of the residuals. Also: ms per MD step, and each run's force MAE on
the held-out frames (first 500). Not a test (minutes per run).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_nve.py --out docs/bench_nve.json | tee docs/bench_nve_run.log
    .venv/bin/python benchmarks/bench_nve.py --molecules uracil --ps 1        # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from diag_lam_check import reproduction_split  # noqa: E402
from aff_app.calculator import AFFCalculator  # noqa: E402
from aff_app.workflows import pipeline  # noqa: E402

KCAL = units.kcal / units.mol  # eV per kcal/mol


def run_nve(fm, em, start, z, *, conservative: bool, ps: float, seed: int, every: int = 20) -> dict:
    atoms = Atoms(numbers=z, positions=start)
    atoms.calc = AFFCalculator(fm, em, conservative=conservative)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    Stationary(atoms)
    ZeroRotation(atoms)
    steps = int(round(ps * 1000 / 0.5))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    t_ps, e_tot, temp = [], [], []

    def log():
        t_ps.append(dyn.nsteps * 0.5e-3)
        e_tot.append((atoms.get_potential_energy() + atoms.get_kinetic_energy()) / KCAL)
        temp.append(atoms.get_temperature())

    dyn.attach(log, interval=every)
    t0 = time.perf_counter()
    dyn.run(steps)
    wall = time.perf_counter() - t0
    t, e = np.array(t_ps), np.array(e_tot)
    slope, icpt = np.polyfit(t, e, 1)
    return {"conservative": conservative, "ps": ps, "steps": steps, "drift_kcal_mol_per_ps": float(slope),
            "spread_kcal_mol": float(np.std(e - (slope * t + icpt))), "mean_temperature_K": float(np.mean(temp)),
            "ms_per_step": 1e3 * wall / steps, "final_minus_initial_kcal_mol": float(e[-1] - e[0])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=["benzene", "uracil"])
    ap.add_argument("--m", type=int, nargs="+", default=[200, 400], help="training frames per molecule")
    ap.add_argument("--labels", default="rmd17", choices=["md17", "rmd17"])
    ap.add_argument("--ps", type=float, default=10.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = []
    for mol, m in zip(args.molecules, args.m * len(args.molecules)):
        traj, tr, ev, sym = reproduction_split(mol, args.labels, m)
        trained = pipeline.fit(traj, tr, pipeline.TrainSettings(mode="aff"), symmetry=sym, seed=0)
        fm, em = trained.force, trained.energy
        sub = ev[:500]
        mae_aff = float(np.mean(np.abs(fm.predict(traj.R[sub], return_std=False).mean - traj.F[sub])))
        mae_con = float(np.mean(np.abs(em.forces(traj.R[sub]) - traj.F[sub])))
        for conservative in (False, True):
            r = run_nve(fm, em, traj.R[ev[0]], traj.z, conservative=conservative, ps=args.ps, seed=0)
            r.update(molecule=mol, M=m, labels=args.labels, force_mae=mae_con if conservative else mae_aff)
            rows.append(r)
            print(json.dumps(r), flush=True)
            if args.out:
                args.out.write_text(json.dumps(rows, indent=1))
    print()
    print("| molecule | M | forces | force MAE | drift (kcal/mol/ps) | spread (kcal/mol) | mean T (K) | ms/step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['molecule']} | {r['M']} | {'conservative −∇Ê' if r['conservative'] else 'AFF (direct)'} | "
              f"{r['force_mae']:.3f} | {r['drift_kcal_mol_per_ps']:+.4f} | {r['spread_kcal_mol']:.4f} | "
              f"{r['mean_temperature_K']:.0f} | {r['ms_per_step']:.1f} |")
    print(f"Velocity Verlet, 0.5 fs, {args.ps:g} ps from the first held-out frame, 300 K Maxwell-Boltzmann "
          f"velocities; total energy = integrated energy + kinetic; {args.labels} labels.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

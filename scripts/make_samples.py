"""Regenerate the bundled sample trajectories in sample_data/ (GFN2-xTB, Langevin MD).

Usage (from the repository root; one core is enough and keeps the runs repeatable)::

    OMP_NUM_THREADS=1 python scripts/make_samples.py            # all four files
    OMP_NUM_THREADS=1 python scripts/make_samples.py --only uracil

Each run prints a sanity summary: mean kinetic temperature (all 3N degrees of
freedom), largest interatomic distance, energy range, largest |F|, and the
finite-difference check of the forces on the last frame.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aff_app.io.simulate import simulate_trajectory, write_sample  # noqa: E402

#: The committed samples: file stem -> keyword arguments of simulate_trajectory.
SAMPLES = {
    "benzene": dict(molecule="benzene", steps=3000, sample_every=4, equilibration_steps=1000, seed=0),
    "uracil": dict(molecule="uracil", steps=3000, sample_every=4, equilibration_steps=1000, seed=0),
    "ethanol": dict(molecule="ethanol", steps=3000, sample_every=4, equilibration_steps=1000, seed=0),
    "aspirin": dict(molecule="aspirin", steps=3000, sample_every=4, equilibration_steps=1000, seed=0),
}
COMMON = dict(temperature_K=300.0, timestep_fs=0.5)


def _fd_check(traj, frame: int = -1, h: float = 1e-3) -> float:
    """Largest |F + dE/dR| (kcal/mol/Å) on one frame, central differences with the same calculator."""
    from aff_app.io.simulate import _make_calculator
    from aff_app.units import energy_factor
    from ase import Atoms

    s = traj.provenance.settings
    atoms = Atoms(numbers=traj.z, positions=traj.R[frame])
    atoms.calc = _make_calculator(s["charge"], s["multiplicity"] - 1)
    grad = np.zeros_like(traj.R[frame])
    for a in range(len(atoms)):
        for k in range(3):
            e = []
            for sign in (1, -1):
                p = traj.R[frame].copy()
                p[a, k] += sign * h
                atoms.positions = p
                e.append(atoms.get_potential_energy())
            grad[a, k] = (e[0] - e[1]) / (2 * h) * energy_factor("eV")
    return float(np.max(np.abs(traj.F[frame] + grad)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SAMPLES), action="append", help="regenerate only this sample (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "sample_data"), help="output folder (default: sample_data/)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for stem in args.only or SAMPLES:
        kw = {**COMMON, **SAMPLES[stem]}
        t0 = time.perf_counter()
        traj = simulate_trajectory(**kw)
        wall = time.perf_counter() - t0
        path = write_sample(traj, out / f"{stem}.npz")
        d = np.linalg.norm(traj.R[:, :, None, :] - traj.R[:, None, :, :], axis=-1)
        diag = traj.provenance.settings["diagnostics"]
        print(
            f"{stem}: {traj.n_frames} frames x {traj.n_atoms} atoms in {wall:.0f} s -> {path} "
            f"({path.stat().st_size / 1e6:.2f} MB); T_kin = {diag['mean_kinetic_temperature_K']:.1f} "
            f"± {diag['std_kinetic_temperature_K']:.1f} K; max distance {d.max():.2f} Å; "
            f"E range {np.ptp(traj.E):.1f} kcal/mol; max |F| {np.linalg.norm(traj.F, axis=-1).max():.1f} kcal/mol/Å; "
            f"FD check max |F + dE/dR| = {_fd_check(traj):.2e} kcal/mol/Å",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

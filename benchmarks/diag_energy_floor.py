"""How well can the energy GP do with exact forces? One molecule of ../shared/data/md17 (not a test).

On the reproduction's split (seed 0, 2,000 test frames, 200 validation frames) it fits the energy
GP of method.md on the M training energies (γ and λ by the profile likelihood, as the
reproduction does) and predicts held-out energies conditioned on the REFERENCE forces at x*
(instead of a force model's prediction), with each number of conditioning training neighbours
asked for (0 = method.md's formula; the default of the library is 3). With exact forces at x*
this is the best the energy model can do at M: what is left is the energy surface the M
energies do not pin down. Run for both label sets to compare the original MD17 energies with
rMD17's. The force model it needs for the PS kernel is a throw-away fit on 50 frames (its
predictions are not used).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/diag_energy_floor.py naphthalene --m 1600 \\
        --labels md17 rmd17 --neighbours 0 3 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aff_app.gp.energy import fit_energy_model  # noqa: E402
from aff_app.gp.force import fit_force_model  # noqa: E402
from diag_lam_check import reproduction_split  # noqa: E402  (this folder: the script's own)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("molecule")
    ap.add_argument("--m", type=int, default=1600, help="training energies (default 1600)")
    ap.add_argument("--labels", nargs="+", choices=("md17", "rmd17"), default=["md17", "rmd17"])
    ap.add_argument("--neighbours", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--n-test", type=int, default=2000, help="held-out frames predicted (default all 2000)")
    args = ap.parse_args(argv)
    for labels in args.labels:
        traj, tr, ev, sym = reproduction_split(args.molecule, labels, args.m)
        ev = ev[: args.n_test]
        fm = fit_force_model(traj.R[tr[:50]], traj.F[tr[:50]], traj.z, pe_sets=list(sym.pe_sets), perms=sym.perms)
        t = time.perf_counter()
        em = fit_energy_model(fm, traj.R[tr], traj.E[tr], F=traj.F[tr])
        print(f"{args.molecule} {labels} M = {args.m}: energy γ {em.gamma:.3g}, λ {em.lam:.3g} "
              f"(noise std by the likelihood √(σ̂²λ) = {np.sqrt(em.sigma2 * em.lam):.3g} kcal/mol), "
              f"fit {time.perf_counter() - t:.0f} s; training energies' std {traj.E[tr].std():.3g} kcal/mol", flush=True)
        for k in args.neighbours:
            t = time.perf_counter()
            p = em.predict(traj.R[ev], forces=traj.F[ev], neighbours=k)
            err = p.mean - traj.E[ev]
            print(f"  reference forces at x*, {k} neighbours: energy MAE {np.abs(err).mean():.4f} kcal/mol, "
                  f"RMSE {np.sqrt(np.mean(err ** 2)):.4f}, bias {err.mean():+.4f}, "
                  f"95% coverage {np.mean(np.abs(err) <= 1.96 * p.std):.3f} ({time.perf_counter() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

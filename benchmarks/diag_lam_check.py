"""Diagnose the λ check (and γ) of the force fit on one molecule of ../shared/data/md17 (not a test).

On the reproduction's split (seed 0, 2,000 test frames, 200 validation frames) it fits AFF at M
frames with the default search and λ check, then refits at the same γ with the search's λ, λ/16
and any further divisors, and prints for each: the held-out force MAE and the exact
leave-one-frame-out MAE of every PE set (last max(40, M/8) training frames), and what a λ check
pooled over the k smallest sets would conclude. With ``--gamma-factors`` it also refits at
γ·f (the fit's λ) and prints the held-out force MAE, overall and per PE set. Needs memory for
one model at M (naphthalene M = 1600: ~12 GB).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/diag_lam_check.py uracil --m 1600 --labels md17
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/diag_lam_check.py naphthalene --divisors 1 \
        --gamma-factors 0.6 0.8 1.25
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aff_app.io.files import load_trajectory  # noqa: E402
from aff_app.gp.force import LOO_FRAMES, fit_force_model, loo_frame_residuals  # noqa: E402
from aff_app.reproduce.planning import make_split
from aff_app.reproduce.settings import DEFAULT_DATA_DIR  # noqa: E402
from aff_app.symmetry import detect_symmetry  # noqa: E402


def reproduction_split(molecule: str, labels: str, m: int):
    """The reproduction's frames for one molecule: (trajectory, training indices (m), test indices, symmetry).

    Seed 0, 2,000 test and 200 validation frames, the symmetry search on 200 frames — as
    ``python -m aff_app reproduce`` draws them, so the diagnostics speak of its numbers.
    """
    traj = load_trajectory(DEFAULT_DATA_DIR / f"{molecule}.npz", label_set=labels)
    split = make_split(traj.n_frames, 2000, 200, seed=0)
    return traj, split.train(m), split.eval, detect_symmetry(traj.R, traj.z, n_samples=200, seed=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("molecule")
    ap.add_argument("--m", type=int, default=1600, help="training frames (default 1600)")
    ap.add_argument("--labels", choices=("md17", "rmd17"), default="md17")
    ap.add_argument("--divisors", type=float, nargs="+", default=[1, 16], help="λ = search λ / d (default 1 16)")
    ap.add_argument("--gamma-factors", type=float, nargs="*", default=[],
                    help="also refit at γ·f with the fit's λ (held-out MAE per PE set)")
    args = ap.parse_args(argv)
    traj, tr, ev, sym = reproduction_split(args.molecule, args.labels, args.m)
    kw = dict(pe_sets=list(sym.pe_sets), perms=sym.perms, train_idx=tr, seed=0)

    def held_out(model) -> str:
        err = np.abs(model.predict(traj.R[ev], return_std=False).mean - traj.F[ev])
        per_set = [round(float(err[:, s].mean()), 4) for s in model.pe_sets]
        return f"test MAE {err.mean():.4f} (per PE set {per_set})"

    t = time.perf_counter()
    fm = fit_force_model(traj.R[tr], traj.F[tr], traj.z, **kw)
    print(f"default fit {time.perf_counter() - t:.1f} s: γ {fm.gamma:.4g}, λ {fm.lam:.3g}, {held_out(fm)}; "
          f"λ check {json.dumps(dataclasses.asdict(fm.record.lam_check))}", flush=True)
    gamma, lam, lam_search, sizes = fm.gamma, fm.lam, fm.record.search.lam, [s.size for s in fm.pe_sets]
    del fm
    for f in args.gamma_factors:
        t = time.perf_counter()
        m = fit_force_model(traj.R[tr], traj.F[tr], traj.z, gamma=gamma * f, lam=lam, calibrate=None, **kw)
        print(f"γ·{f:g} = {m.gamma:.4g} (λ {lam:.3g}), fit {time.perf_counter() - t:.0f} s: {held_out(m)}", flush=True)
        del m
    q = min(args.m, max(LOO_FRAMES, args.m // 8))
    loos = {}
    for d in args.divisors:
        m = fit_force_model(traj.R[tr], traj.F[tr], traj.z, gamma=gamma, lam=lam_search / d, **kw)
        loos[d] = [float(np.mean(np.abs(loo_frame_residuals(L, a, 3 * s.size, q)[0])))
                   for L, a, s in zip(m._factors(), m.alpha, m.pe_sets)]
        print(f"λ/{d:g} = {lam_search / d:.3g}: {held_out(m)}; leave-one-out MAE per set "
              f"{[round(x, 4) for x in loos[d]]}", flush=True)
        del m
    order = np.argsort(sizes, kind="stable")
    base = loos[args.divisors[0]]
    for d in args.divisors[1:]:
        for k in sorted({1, 2, 3, len(sizes)}):
            idx = order[:k]
            # pooled as the fit pools: residuals weighted by the set's components
            a = sum(base[i] * sizes[i] for i in idx) / sum(sizes[i] for i in idx)
            b = sum(loos[d][i] * sizes[i] for i in idx) / sum(sizes[i] for i in idx)
            print(f"  λ/{d:g} against λ/{args.divisors[0]:g}, pooled over the {k} smallest sets: "
                  f"{a:.4f} -> {b:.4f} ({100 * (1 - b / a):+.1f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

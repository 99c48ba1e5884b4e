"""The iterative solver against the dense one (issue 18; method.md "Iterative path").

Benzene and naphthalene from ../shared/data/md17 (rMD17 labels). Each molecule's 5,000 frames are
split once (seed 0): 500 random test frames, and training frames drawn from the other 4,500, nested
(the M = 1000 frames are the first 1000 of the M = 2000 draw, ...). The files hold 5,000 frames, so
the largest training set that leaves held-out frames is M = 4,500: that is the "M = 5,000" row.

Each fit runs in its own process (its peak resident memory, ru_maxrss, is the fit's), with AFF's
default symmetry (PE sets and permutation group found on 200 frames), the default hyperparameter
search (profile likelihood on a subset of the frames) and the default calibration, and the
solver forced: 'dense' at M = 1000 (the reference) and 'iterative' at every M. Reported per fit:
fit time, CG iterations per PE set (and those of the calibration's held-out solve), the nugget
used (the iterative path's floor), Nyström frames, peak memory, held-out force MAE and PCI(95%)
(share of the latent 95% intervals holding the reference force component), and the ratios against
the dense M = 1000 fit of the same run.

Usage (takes long on the 2-core machine; run in the background):

    nohup .venv/bin/python benchmarks/bench_iterative.py --out docs/bench_iterative.json \
        > docs/bench_iterative_run.log 2>&1 &
    .venv/bin/python benchmarks/bench_iterative.py --molecules benzene --sizes 1000 --solvers dense iterative
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MD17 = ROOT.parent / "shared" / "data" / "md17"
N_TEST = 500


def split(n_frames: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test): 500 random test frames; the first m of a fixed permutation of the others."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_frames)
    test = np.sort(order[:N_TEST])
    pool = order[N_TEST:]
    if m > pool.size:
        raise SystemExit(f"M = {m} leaves no held-out frames ({n_frames} frames, {N_TEST} for testing)")
    return np.sort(pool[:m]), test


def one_fit(molecule: str, m: int, solver: str, budget_gb: float | None, tol: float | None,
            gamma: float | None = None, lam_rel: float | None = None) -> dict:
    """Fit and test one model in this process; returns the row (peak memory of this process)."""
    from aff_app.gp import fit_force_model
    from aff_app.gp.budget import default_budget_bytes, estimate_cost
    from aff_app.symmetry import detect_symmetry

    d = np.load(MD17 / f"{molecule}.npz")
    R, F, z = d["R"], d["F"], d["z"]
    train, test = split(R.shape[0], m)
    sym = detect_symmetry(R[train], z, n_samples=200, seed=0)
    budget = default_budget_bytes() if budget_gb is None else int(budget_gb * 2**30)
    sizes = [s.size for s in sym.pe_sets]
    est = estimate_cost(m, sizes, n_perms=len(sym.perms), keep_factors=False, solver=solver, budget_bytes=budget,
                        n_atoms=z.size)
    t0 = time.perf_counter()
    fixed = {}
    if gamma is not None:  # γ (and λ, in units of the kernel variance 5/(3γ²)) fixed: no search
        fixed = {"gamma": gamma, "lam": (lam_rel if lam_rel is not None else 1e-12) * 5.0 / (3.0 * gamma**2)}
    model = fit_force_model(R[train], F[train], z, pe_sets=list(sym.pe_sets), perms=sym.perms, keep_factors=False,
                            solver=solver, budget_bytes=budget, cg_tol=tol, train_idx=train, seed=0, **fixed)
    fit_s = time.perf_counter() - t0
    tp = time.perf_counter()
    pred = model.predict(R[test])
    pred_s = time.perf_counter() - tp
    lo, hi = pred.interval(0.95)
    ref = F[test]
    rec = model.record
    row = {
        "molecule": molecule, "M": m, "solver": model.solver, "n_test": int(test.size),
        "n_sets": len(sym.pe_sets), "set_sizes": sizes, "n_perms": int(len(sym.perms)),
        "fit_s": fit_s, "predict_s": pred_s, "search_s": rec.timings.search_s,
        "gamma": model.gamma, "lam": model.lam, "lam_search": rec.search.lam, "gamma_fixed": gamma is not None,
        "search_lam_min_rel": rec.search.lam_min_rel,
        "force_mae": float(np.mean(np.abs(pred.mean - ref))),
        "force_rmse": float(np.sqrt(np.mean((pred.mean - ref) ** 2))),
        "pci": float(np.mean((ref >= lo) & (ref <= hi))),
        "lci": float(np.mean(hi - lo)),
        "calibration_scale": rec.calibration.scale,
        "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "estimate_peak_GB": est.peak_bytes / 2**30, "estimate_s": est.seconds, "budget_GB": budget / 2**30,
    }
    if model.solver == "iterative":
        s = rec.solver
        row.update(iterations=list(s.iterations), held_out_iterations=list(s.held_out_iterations or []),
                   residuals=list(s.residuals), nystrom_frames=s.nystrom_frames, lam_floor=s.lam_floor,
                   precondition_s=s.precondition_s, cg_s=s.cg_s, products=s.products,
                   coefficients_cached=s.coefficients_cached, solver_memory_GB=s.memory_bytes / 2**30)
    else:
        row.update(build_s=rec.timings.build_s, cholesky_s=rec.timings.cholesky_s,
                   lam_check_lowered=rec.lam_check.lowered)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--molecules", nargs="+", default=["benzene", "naphthalene"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 2000, 4500])
    ap.add_argument("--solvers", nargs="+", default=None,
                    help="default: dense and iterative at M = 1000, iterative above")
    ap.add_argument("--budget-gb", type=float, default=None, help="memory budget (default AFF_MEMORY_BUDGET_GB or 60%% of RAM)")
    ap.add_argument("--tol", type=float, default=None, help="CG tolerance (default aff_app.gp.iterative.CG_TOL)")
    ap.add_argument("--gamma", type=float, default=None, help="fix γ (1/Å): no search (the long fits reuse the "
                    "floor-restricted search's γ of a smaller M)")
    ap.add_argument("--lam-rel", type=float, default=None, help="with --gamma: λ in kernel variances (default 1e-12)")
    ap.add_argument("--out", default=None, help="JSON file for the rows (default: print only)")
    ap.add_argument("--one", nargs=3, metavar=("MOLECULE", "M", "SOLVER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        mol, m, solver = args.one
        print("ROW " + json.dumps(one_fit(mol, int(m), solver, args.budget_gb, args.tol, args.gamma, args.lam_rel)),
              flush=True)
        return
    rows = []
    out = Path(args.out) if args.out else None
    for mol in args.molecules:
        for m in args.sizes:
            solvers = args.solvers or (["dense", "iterative"] if m <= 1000 else ["iterative"])
            for solver in solvers:
                cmd = [sys.executable, __file__, "--one", mol, str(m), solver]
                if args.budget_gb is not None:
                    cmd += ["--budget-gb", str(args.budget_gb)]
                if args.tol is not None:
                    cmd += ["--tol", str(args.tol)]
                if args.gamma is not None:
                    cmd += ["--gamma", str(args.gamma)] + ([] if args.lam_rel is None else ["--lam-rel", str(args.lam_rel)])
                t0 = time.perf_counter()
                print(f"== {mol} M = {m} {solver}", flush=True)
                p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("ROW ")]
                if p.returncode != 0 or not line:
                    row = {"molecule": mol, "M": m, "solver": solver, "error": (p.stderr or p.stdout)[-2000:],
                           "wall_s": time.perf_counter() - t0}
                else:
                    row = json.loads(line[-1][4:])
                print(json.dumps(row), flush=True)
                rows.append(row)
                # ratios against the dense M = 1000 fit of the same molecule, same run
                ref = next((r for r in rows if r["molecule"] == mol and r.get("solver") == "dense"
                            and r["M"] == 1000 and "error" not in r), None)
                for r in rows:
                    if ref is not None and r["molecule"] == mol and "error" not in r:
                        r["vs_dense_1000"] = {"fit_s": r["fit_s"] / ref["fit_s"],
                                              "force_mae": r["force_mae"] / ref["force_mae"],
                                              "peak_rss": r["peak_rss_GB"] / ref["peak_rss_GB"]}
                if out is not None:
                    out.write_text(json.dumps({"machine": f"{os.cpu_count()} cores", "n_test": N_TEST,
                                               "rows": rows}, indent=1))
    for r in rows:
        if "error" in r:
            print(f"{r['molecule']:12s} M={r['M']:5d} {r['solver']:9s} ERROR {r['error'][-200:]}")
            continue
        its = r.get("iterations", "")
        print(f"{r['molecule']:12s} M={r['M']:5d} {r['solver']:9s} fit {r['fit_s']:8.1f} s  it {its}  "
              f"peak {r['peak_rss_GB']:5.2f} GB  MAE {r['force_mae']:.4f}  PCI {100 * r['pci']:.1f}%  "
              f"λ {r['lam']:.2e}")


if __name__ == "__main__":
    main()

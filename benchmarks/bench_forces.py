"""AFF against the reference sGDML implementation (the `sgdml` package), same splits, same run.

For each molecule of ../shared/data/md17 and each training size M it trains
AFF (aff_app, hyperparameters by profile likelihood) and runs `sgdml all`
(its own permutation search, σ grid and validation: the package used as it
comes) on the SAME training frames, validates sgdml on the same 200 validation
frames, and tests both on the same held-out frames. It prints one table:

    train time AFF, train time sgdml, their ratio, force MAE of both,
    AFF's Cholesky flop count per fit (one factorisation per PE set, plus the
    λ check's second one of each probe set) and the GFLOP/s it reached, against
    the dense-Cholesky rate of this machine measured in the same run.

Then the two targets of issue 3 that need a run of their own:
  * accuracy at equal training time: AFF given the wall time of `sgdml all`
    at M = 400 (so it can afford more frames), against sgdml at M = 400;
  * uracil M = 1000: one fixed-hyperparameter AFF fit as a whole process
    (`python -m aff_app train ... --gamma --lam`; the median of
    --fixed-fit-repeats runs), against the time of the dense Cholesky
    factorisations it needs, measured in this process. ``--fixed-fit-only``
    runs this measurement alone (about a minute).

sgdml is skipped at a size only where it cannot finish on this machine; the
reason is printed (its memory grows with (3MN)² and it holds several copies).

Usage (needs requirements-peer.txt installed; takes long — run on a quiet machine):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_forces.py \
        --molecules uracil benzene aspirin --sizes 200 400 800 1000 --out artifacts/bench_forces.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aff_app.gp.budget import estimate_cost  # noqa: E402
from aff_app.gp import fit_force_model  # noqa: E402
from aff_app.gp.force import _cholesky_inplace  # noqa: E402
from aff_app.peers.sgdml import check_sgdml_fits, run_sgdml, sgdml_predict, write_sgdml_dataset  # noqa: E402
from aff_app.symmetry import detect_symmetry  # noqa: E402

MD17 = ROOT.parent / "shared" / "data" / "md17"
THEORY = "rMD17 PBE/def2-SVP"
MEMORY_GB = 24.0  # the machine this benchmark was written for; the peer may plan to use 85% of it


def _spd(rng, n):
    A = rng.normal(size=(n, 64))
    return A @ A.T + n * np.eye(n)


def _time_inplace_cholesky(mats, parallel: bool, repeats: int = 1) -> float:
    """Seconds to factor every matrix of ``mats`` with the fit's own in-place routine.

    Buffers are allocated and refilled outside the timing (no allocation or
    page-fault cost in the reference). ``parallel``: one matrix per core at once,
    one BLAS thread each (how AFF factors many small per-set kernels); else one
    after another on all BLAS threads. Best of ``repeats``.
    """
    from threadpoolctl import threadpool_limits

    from aff_app.gp.kernels import parallel_map

    bufs = [np.empty_like(A) for A in mats]
    best = np.inf
    for _ in range(repeats):
        for b, A in zip(bufs, mats):
            np.copyto(b, A)
        t = time.perf_counter()
        if parallel:
            with threadpool_limits(limits=1, user_api="blas"):
                parallel_map(lambda b: _cholesky_inplace(b, 0.0), bufs)
        else:
            for b in bufs:
                _cholesky_inplace(b, 0.0)
        best = min(best, time.perf_counter() - t)
    return best


def machine_cholesky_rate(repeats: int = 3) -> float:
    """Best dense Cholesky rate of this machine, flop/s, with the routine the fits use.

    The better of (a) n = 6000 on all BLAS threads and (b) one n = 3000 matrix per
    core at once, one BLAS thread each — best of ``repeats`` each. (An earlier
    version timed scipy.linalg.cholesky with a copy inside the timing and
    reported fits running at 150% of "the machine".)
    """
    rng = np.random.default_rng(0)
    t_big = _time_inplace_cholesky([_spd(rng, 6000)], parallel=False, repeats=repeats)
    cores = os.cpu_count() or 1
    t_small = _time_inplace_cholesky([_spd(rng, 3000) for _ in range(cores)], parallel=True, repeats=repeats)
    return max(6000**3 / 3.0 / t_big, cores * 3000**3 / 3.0 / t_small)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def split(n_frames: int, n_test: int, n_valid: int, seed: int = 0):
    perm = np.random.default_rng(seed).permutation(n_frames)
    return np.sort(perm[:n_test]), np.sort(perm[n_test : n_test + n_valid]), perm[n_test + n_valid :]


def fit_aff(R, F, z, sym, gamma=None, lam=None):
    t = time.perf_counter()
    model = fit_force_model(R, F, z, mode="aff", pe_sets=sym.pe_sets, perms=sym.perms, gamma=gamma, lam=lam)
    return model, time.perf_counter() - t


def evaluate(model, R, F):
    pred = model.predict(R)
    lo, hi = pred.interval(0.95)
    return float(np.mean(np.abs(pred.mean - F))), float(np.mean((F >= lo) & (F <= hi)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=["uracil", "benzene", "aspirin"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[200, 400, 800, 1000])
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--n-valid", type=int, default=200)
    ap.add_argument("--sgdml-timeout", type=float, default=1800.0)
    ap.add_argument("--no-sgdml", action="store_true", help="AFF only (no peer)")
    ap.add_argument("--thorough-max-m", type=int, default=400,
                    help="also fit AFF with the search on all M frames (capped by MAX_SEARCH_SIDE) up to this M")
    ap.add_argument("--equal-time-sizes", nargs="+", type=int, default=[600, 800, 1000, 1200, 1600, 2000, 2400])
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench_forces.json")
    ap.add_argument("--fixed-fit-repeats", type=int, default=5,
                    help="whole-process fixed-γ/λ uracil fits to time (the median is compared; default 5)")
    ap.add_argument("--fixed-fit-only", action="store_true",
                    help="only the whole-process uracil M = 1000 measurement (γ/λ from an AFF fit at M = 400)")
    args = ap.parse_args(argv)
    if args.fixed_fit_only:
        return fixed_fit_only(args)

    rate = machine_cholesky_rate()
    print(f"machine dense Cholesky rate (best of n=6000 threaded / n=3000 per core): {rate / 1e9:.1f} GFLOP/s",
          flush=True)
    rows, extra = [], {}
    work = Path(tempfile.mkdtemp(prefix="bench_forces_"))
    for mol in args.molecules:
        d = np.load(MD17 / f"{mol}.npz")
        R, z, E, F = d["R"], d["z"], d["E"], d["F"]
        test, valid, pool = split(R.shape[0], args.n_test, args.n_valid)
        t = time.perf_counter()
        sym = detect_symmetry(R, z, n_samples=200, seed=0)
        t_sym = time.perf_counter() - t
        valid_path = work / f"{mol}_valid.npz"
        if not args.no_sgdml:
            write_sgdml_dataset(valid_path, f"{mol}_valid", R[valid], z, E[valid], F[valid], theory=THEORY)
        sgdml_time = {}
        sgdml_mae = {}
        for m in args.sizes:
            tr = np.sort(pool[:m])
            model, t_aff = fit_aff(R[tr], F[tr], z, sym)
            t_aff += t_sym
            mae_aff, pci_aff = evaluate(model, R[test], F[test])
            est = estimate_cost(m, [s.size for s in sym.pe_sets], n_perms=len(sym.perms))
            chol_s = model.record.timings.cholesky_s
            # the fit's factorisations: one per PE set, plus the λ check's second one of each probe set
            refine = dataclasses.asdict(model.record.lam_check)
            probe_flops = sum((3 * m * model.pe_sets[p].size) ** 3 / 3 for p in refine["probe_sets"])
            flops = est.cholesky_flops + probe_flops
            row = {
                "molecule": mol, "M": m, "aff_train_s": t_aff, "aff_mae": mae_aff, "aff_pci": pci_aff,
                "aff_gamma": model.gamma, "aff_lam": model.lam, "aff_timings": dataclasses.asdict(model.record.timings),
                "aff_lam_refine": refine, "cholesky_gflop": flops / 1e9, "cholesky_gflops_rate": flops / chol_s / 1e9,
            }
            if m <= args.thorough_max_m:
                # the same fit with the γ/λ search on as many frames as MAX_SEARCH_SIDE allows
                # (the default searches on ~100 frames: fast, but its λ is larger than the one
                # the likelihood picks on all M frames, which costs accuracy at larger M)
                t = time.perf_counter()
                thorough = fit_force_model(R[tr], F[tr], z, mode="aff", pe_sets=sym.pe_sets, perms=sym.perms,
                                           search_frames=m)
                row["aff_thorough_train_s"] = time.perf_counter() - t + t_sym
                row["aff_thorough_mae"], row["aff_thorough_pci"] = evaluate(thorough, R[test], F[test])
                row["aff_thorough_search_frames"] = thorough.record.search.n_frames
                del thorough
            fits, why = check_sgdml_fits(m, z.size, memory_bytes=int(0.85 * MEMORY_GB * 2**30))
            prev = max((k for k in sgdml_time if k < m), default=None)
            projected = sgdml_time[prev] * (m / prev) ** 3 if prev else 0.0  # its solve is O((3MN)³)
            if args.no_sgdml:
                row["sgdml_note"] = "not run (--no-sgdml)"
            elif not fits:
                row["sgdml_note"] = why
            elif projected > args.sgdml_timeout:
                row["sgdml_note"] = (f"skipped at M = {m}: {sgdml_time[prev]:.0f} s at M = {prev} scales (M³) to "
                                     f"~{projected:.0f} s, over the {args.sgdml_timeout:.0f} s limit")
            else:
                train_path = work / f"{mol}_train_{m}.npz"
                write_sgdml_dataset(train_path, f"{mol}_train_{m}", R[tr], z, E[tr], F[tr], theory=THEORY)
                run = run_sgdml(work, train_path, valid_path, m, args.n_valid, timeout_s=args.sgdml_timeout)
                if not run.ok:
                    row["sgdml_note"] = run.reason
                else:
                    _, Fp = sgdml_predict(run.model_path, R[test])
                    row.update(sgdml_train_s=run.wall_s, sgdml_mae=float(np.mean(np.abs(Fp - F[test]))))
                    sgdml_time[m], sgdml_mae[m] = run.wall_s, row["sgdml_mae"]
            rows.append(row)
            print_row(row, rate)
        # accuracy at equal training time: AFF with sgdml's M = 400 wall time (or, where
        # sgdml could not run M = 400 here, its largest finished M — said in the output)
        peer_m = 400 if 400 in sgdml_time else max(sgdml_time, default=None)
        if peer_m is not None:
            budget = sgdml_time[peer_m]
            best, best_model = None, None
            for m in args.equal_time_sizes:
                if m > pool.size:
                    break
                tr = np.sort(pool[:m])
                model, t_aff = fit_aff(R[tr], F[tr], z, sym)
                t_aff += t_sym
                if t_aff > budget:
                    break
                best, best_model = {"M": m, "aff_train_s": t_aff}, model  # evaluated once, below
            if best:
                best["aff_mae"] = evaluate(best_model, R[test], F[test])[0]
            del best_model
            extra.setdefault("equal_time", {})[mol] = {
                "sgdml_M": peer_m, "sgdml_train_s": budget, "sgdml_mae": sgdml_mae[peer_m], "aff": best}
            if best:
                print(f"  equal time ({budget:.0f} s): AFF M={best['M']} MAE {best['aff_mae']:.3f} "
                      f"vs sgdml M={peer_m} MAE {sgdml_mae[peer_m]:.3f}", flush=True)
        # whole-process fixed-hyperparameter fit vs its dense Cholesky factorisations
        if mol == "uracil" and 1000 <= pool.size:
            g = next(r for r in rows if r["molecule"] == mol)
            extra["uracil_fixed_fit"] = fixed_fit_vs_cholesky(mol, z, sym, g["aff_gamma"], g["aff_lam"], work,
                                                              repeats=args.fixed_fit_repeats)
    print_table(rows, rate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine_cholesky_gflops": rate / 1e9, "rows": rows, **extra}, indent=1))
    print(f"wrote {args.out}")
    return 0


def fixed_fit_only(args) -> int:
    """The whole-process measurement alone: γ/λ from an AFF fit of uracil at M = 400, then the timing."""
    mol = "uracil"
    d = np.load(MD17 / f"{mol}.npz")
    R, z, F = d["R"], d["z"], d["F"]
    _, _, pool = split(R.shape[0], args.n_test, args.n_valid)
    sym = detect_symmetry(R, z, n_samples=200, seed=0)
    tr = np.sort(pool[:400])
    model, _ = fit_aff(R[tr], F[tr], z, sym)
    out = fixed_fit_vs_cholesky(mol, z, sym, model.gamma, model.lam, Path(tempfile.mkdtemp(prefix="bench_fixed_")),
                                repeats=args.fixed_fit_repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"uracil_fixed_fit": out}, indent=1))
    print(f"wrote {args.out}")
    return 0


def fixed_fit_vs_cholesky(mol, z, sym, gamma, lam, work: Path, m: int = 1000, repeats: int = 5) -> dict:
    model_path = work / "fixed.npz"
    cmd = [sys.executable, "-m", "aff_app", "train", str(MD17 / f"{mol}.npz"), "--model", "aff", "--n-train",
           str(m), "--seed", "0", "--gamma", repr(gamma), "--lam", repr(lam), "--out", str(model_path), "--json",
           "--no-energy"]  # the force fit as a process (train fits the energy model too by default)
    walls = []
    for _ in range(max(1, repeats)):  # the VM's timings vary by ±10% between identical runs: the median
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip()[-300:]}
    wall = float(np.median(walls))
    # the dense Cholesky factorisations this fit needs: one per PE set, side 3·M·l_i,
    # timed both ways (sets one after another with threaded BLAS; sets in parallel with
    # one BLAS thread each) with the fit's own in-place routine, the faster taken
    rng = np.random.default_rng(1)
    mats = [_spd(rng, 3 * m * s.size) for s in sym.pe_sets]
    chol = min(_time_inplace_cholesky(mats, parallel=False), _time_inplace_cholesky(mats, parallel=True))
    del mats
    out = {"M": m, "process_wall_s": wall, "process_walls_s": walls, "dense_cholesky_s": chol, "ratio": wall / chol}
    print(f"  uracil M={m}, fixed γ/λ: whole process {wall:.2f} s (median of {len(walls)}: "
          f"{', '.join(f'{w:.2f}' for w in walls)}), its dense Cholesky factorisations {chol:.2f} s, "
          f"ratio {wall / chol:.2f}", flush=True)
    return out


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def print_row(r, rate):
    ratio = r["sgdml_train_s"] / r["aff_train_s"] if "sgdml_train_s" in r else None
    print(f"{r['molecule']:<9} M={r['M']:<5} AFF {r['aff_train_s']:7.1f} s MAE {r['aff_mae']:.3f} PCI {r['aff_pci']:.3f} | "
          f"sgdml {fmt(r.get('sgdml_train_s'), '7.1f')} s MAE {fmt(r.get('sgdml_mae'), '.3f')} | ratio {fmt(ratio, '.1f')} "
          f"| chol {r['cholesky_gflop']:.1f} GFLOP at {r['cholesky_gflops_rate']:.1f} GFLOP/s "
          f"({100 * r['cholesky_gflops_rate'] * 1e9 / rate:.0f}% of machine) {r.get('sgdml_note', '')}", flush=True)
    if "aff_thorough_mae" in r:
        print(f"{'':<9} {'':<7} AFF, search on {r['aff_thorough_search_frames']} frames: {r['aff_thorough_train_s']:.1f} s "
              f"MAE {r['aff_thorough_mae']:.3f} PCI {r['aff_thorough_pci']:.3f}", flush=True)


def print_table(rows, rate):
    print()
    print("| molecule | M | AFF train s | sgdml train s | sgdml/AFF | AFF force MAE | sgdml force MAE | AFF/sgdml MAE "
          "| AFF PCI(95%) | AFF Cholesky GFLOP | GFLOP/s (% of machine) | AFF, search on all frames: s, MAE, PCI |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["sgdml_train_s"] / r["aff_train_s"] if "sgdml_train_s" in r else None
        sg = fmt(r.get("sgdml_train_s"), ".1f") if "sgdml_train_s" in r else r.get("sgdml_note", "—")
        mae_ratio = r["aff_mae"] / r["sgdml_mae"] if "sgdml_mae" in r else None
        th = "—"
        if "aff_thorough_mae" in r:
            rel = f" ({r['aff_thorough_mae'] / r['sgdml_mae']:.2f}×)" if "sgdml_mae" in r else ""
            th = (f"{r['aff_thorough_train_s']:.1f} s, {r['aff_thorough_mae']:.3f}{rel}, "
                  f"{100 * r['aff_thorough_pci']:.1f}% ({r['aff_thorough_search_frames']} frames)")
        print(f"| {r['molecule']} | {r['M']} | {r['aff_train_s']:.1f} | {sg} | {fmt(ratio, '.1f')} | "
              f"{r['aff_mae']:.3f} | {fmt(r.get('sgdml_mae'), '.3f')} | {fmt(mae_ratio, '.2f')} | {100 * r['aff_pci']:.1f}% | "
              f"{r['cholesky_gflop']:.1f} | {r['cholesky_gflops_rate']:.1f} ({100 * r['cholesky_gflops_rate'] * 1e9 / rate:.0f}%) | {th} |")
    print(f"\nunits: seconds, kcal/mol/Å; machine dense Cholesky rate {rate / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark the DCF-style direct covariant force network on rMD17 ethanol, uracil and aspirin (not a test).

On the reproduction's split (seed 0, 2,000 test and 200 validation frames, as
``benchmarks/diag_lam_check.py`` draws them) it trains :func:`aff_app.dcf.fit_dcf` with the
default settings at M training frames per molecule, and prints the training time, the epochs
run and why training stopped, the held-out force MAE and RMSE on the 2,000 test frames
(kcal/mol/Å) and the prediction time per frame; ``--out`` writes the same as JSON.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_dcf.py --out docs/bench_dcf.json > docs/bench_dcf_run.log
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aff_app import __version__  # noqa: E402
from aff_app.dcf import DCFSettings, fit_dcf  # noqa: E402
from aff_app.io.files import load_trajectory  # noqa: E402
from aff_app.reproduce.planning import make_split  # noqa: E402
from aff_app.reproduce.settings import DEFAULT_DATA_DIR  # noqa: E402


def reproduction_split(molecule: str, labels: str, m: int):
    """The reproduction's frames for one molecule: (trajectory, training indices (m), test indices).

    Seed 0, 2,000 test and 200 validation frames, as ``python -m aff_app reproduce`` draws them
    (``benchmarks/diag_lam_check.py`` without the symmetry search, which DCF does not use).
    """
    traj = load_trajectory(DEFAULT_DATA_DIR / f"{molecule}.npz", label_set=labels)
    split = make_split(traj.n_frames, 2000, 200, seed=0)
    return traj, split.train(m), split.eval


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=["ethanol", "uracil", "aspirin"])
    ap.add_argument("--m", type=int, default=1000, help="training frames (default 1000)")
    ap.add_argument("--labels", choices=("md17", "rmd17"), default="rmd17")
    ap.add_argument("--seed", type=int, default=0, help="DCFSettings.seed (default 0)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    settings = DCFSettings(seed=args.seed)
    rows = []
    print(f"DCF-style network, defaults {json.dumps(settings.to_dict())}", flush=True)
    print(f"{'molecule':<10} {'M':>5} {'train s':>8} {'epochs':>7} {'stop':<15} {'MAE':>7} {'RMSE':>7} "
          f"{'ms/frame':>9}", flush=True)
    for mol in args.molecules:
        traj, tr, ev = reproduction_split(mol, args.labels, args.m)
        t = time.perf_counter()
        model = fit_dcf(traj.R[tr], traj.F[tr], traj.z, train_idx=tr, settings=settings)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        pred = model.predict_forces(traj.R[ev])
        ms = (time.perf_counter() - t) / len(ev) * 1e3
        err = pred - traj.F[ev]
        row = dict(molecule=mol, labels=args.labels, m=int(args.m), n_test=int(len(ev)), n_atoms=int(traj.n_atoms),
                   train_s=round(train_s, 2), epochs=int(model.history.epochs), stop_reason=model.history.stop_reason,
                   best_epochs=model.history.best_epochs.tolist(), mae=float(np.abs(err).mean()),
                   rmse=float(np.sqrt(np.mean(err**2))), mean_abs_force=float(np.abs(traj.F[ev]).mean()),
                   predict_ms_per_frame=round(ms, 3))
        rows.append(row)
        print(f"{mol:<10} {args.m:>5} {train_s:>8.1f} {row['epochs']:>7} {row['stop_reason']:<15} {row['mae']:>7.3f} "
              f"{row['rmse']:>7.3f} {ms:>9.3f}", flush=True)
    if args.out is not None:
        meta = dict(version=__version__, settings=settings.to_dict(), python=platform.python_version(),
                    numpy=np.__version__, omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                    cpus=os.cpu_count(), units=dict(force="kcal/mol/Å", time="s"))
        args.out.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Permutation search: aff_app.symmetry.find_permutations against sgdml's find_perms.

For each rMD17 molecule, the same frames (200 drawn with numpy's default_rng(0))
go to both searches in this process; the table gives the group orders, whether
the two groups (and so the PE sets) are the same permutations, the best of
``--repeat`` wall-clock times of each, and their ratio (ours / sgdml).

sgdml is the optional peer (requirements-peer.txt). Its find_perms runs its
pair matching in a multiprocessing pool of (cores - 1) workers, included in its
time. Run with ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_symmetry.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from aff_app.symmetry import find_permutations, pe_sets_from_permutations

MOLECULES = ["benzene", "uracil", "aspirin", "naphthalene", "toluene", "ethanol", "malonaldehyde", "salicylic"]
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "md17"


def best_time(fn, repeat: int):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with <molecule>.npz (keys R, z)")
    ap.add_argument("--n-samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from sgdml.utils.perm import find_perms
    except ImportError as exc:
        print(f"sgdml is not installed ({exc}): pip install -r requirements-peer.txt (torch first)")
        return 1

    print(f"{args.n_samples} frames per molecule (numpy default_rng({args.seed})), best of {args.repeat} runs")
    header = f"{'molecule':14s} {'perms ours/sgdml':>16s} {'same group':>10s} {'PE sets':>7s} {'ours [s]':>9s} {'sgdml [s]':>9s} {'ratio':>6s}"
    print(header)
    print("-" * len(header))
    total_ours = total_sgdml = 0.0
    for name in MOLECULES:
        with np.load(args.data / f"{name}.npz") as d:
            R, z = d["R"], d["z"]
        rng = np.random.default_rng(args.seed)
        idx = np.sort(rng.choice(R.shape[0], size=min(args.n_samples, R.shape[0]), replace=False))
        X = np.ascontiguousarray(R[idx])
        # both get exactly these frames (ours takes all frames when M <= n_samples)
        t_ours, ours = best_time(lambda: find_permutations(X, z, n_samples=X.shape[0]), args.repeat)

        def run_sgdml():
            with contextlib.redirect_stdout(io.StringIO()):
                return np.asarray(find_perms(X, z))

        t_sg, theirs = best_time(run_sgdml, args.repeat)
        same = {tuple(p) for p in ours.tolist()} == {tuple(p) for p in theirs.tolist()}
        n_sets = len(pe_sets_from_permutations(ours))
        n_sets_sg = len(pe_sets_from_permutations(theirs))
        total_ours += t_ours
        total_sgdml += t_sg
        print(
            f"{name:14s} {f'{ours.shape[0]}/{theirs.shape[0]}':>16s} {str(same):>10s} "
            f"{f'{n_sets}/{n_sets_sg}':>7s} {t_ours:9.3f} {t_sg:9.3f} {t_ours / t_sg:6.2f}"
        )
    print("-" * len(header))
    print(f"{'total':14s} {'':>16s} {'':>10s} {'':>7s} {total_ours:9.3f} {total_sgdml:9.3f} {total_ours / total_sgdml:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

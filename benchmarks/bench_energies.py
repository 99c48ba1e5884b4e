"""Energies beside the sgdml package (issue 15): AFF's integrated energy on the reproduction's split.

For each molecule × label set: AFF at the paper's M through the one pipeline (force fit, then the
integrated energy of method.md "AFF's energy"), scored on the reproduction's 2,000 held-out frames:
energy MAE, PCI(95%) of the energy intervals with its binomial band, training time (force + energy),
energy prediction cost per frame; the energy GP of method.md "Energy prediction" on the same force
model (the previous default; conditioned on AFF's mean forces) for its energy MAE; the conservative forces −∇Ê against AFF's own forces
(500 frames); and the sgdml package at ``--peer-m`` frames of the same split (energy MAE and wall
time of ``sgdml all``). Prints one table and writes a JSON file (not a test: minutes per row).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_energies.py --out docs/bench_energies.json \
        | tee docs/bench_energies_run.log
    .venv/bin/python benchmarks/bench_energies.py --molecules uracil --labels rmd17 --no-peer   # one row
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from diag_lam_check import reproduction_split  # noqa: E402
from aff_app.gp.energy import fit_energy_model  # noqa: E402
from aff_app.workflows import pipeline  # noqa: E402

PAPER_M = {"naphthalene": 1600, "benzene": 1200, "uracil": 1600, "aspirin": 1200}
BAND_Z = 4.0  # the tests' binomial band: level ± 4 sd of a binomial share


def band(n: int, level: float = 0.95) -> tuple[float, float]:
    half = BAND_Z * (level * (1 - level) / n) ** 0.5
    return level - half, level + half


def per_frame_ms(fn, R, repeats: int = 20) -> float:
    fn(R[:1])  # warm (kernel caches, factors)
    t = time.perf_counter()
    for k in range(repeats):
        fn(R[k:k + 1])
    return 1e3 * (time.perf_counter() - t) / repeats


def aff_row(mol: str, labels: str, m: int, n_conservative: int) -> dict:
    traj, tr, ev, sym = reproduction_split(mol, labels, m)
    trained = pipeline.fit(traj, tr, pipeline.TrainSettings(mode="aff"), symmetry=sym, seed=0)
    fm, em, t = trained.force, trained.energy, trained.timings
    # energies only: the force sds of 2,000 frames (the reproduction's evaluate) cost 15-20 min per row here
    ep = em.predict(traj.R[ev])
    E, Ep, Es = traj.E[ev], ep.mean, ep.std
    err = np.abs(Ep - E)
    pci = float(np.mean(err <= 1.96 * Es))
    lo, hi = band(err.size)
    # the previous default on the same force model: the energy GP with forces at x* and 3 neighbours
    tg = time.perf_counter()
    gp = fit_energy_model(fm, traj.R[tr], traj.E[tr], F=traj.F[tr], train_idx=tr, seed=0)
    t_gp = time.perf_counter() - tg
    # conditioned on AFF's mean forces (force_noise 'nugget'): the pipeline's 'posterior' would need their sds
    pg = gp.predict(traj.R[ev], forces=fm.predict(traj.R[ev], return_std=False).mean)
    err_gp = np.abs(pg.mean - E)
    sub = ev[:n_conservative]
    f_aff = fm.predict(traj.R[sub], return_std=False).mean
    f_con = em.forces(traj.R[sub])
    return {
        "molecule": mol, "labels": labels, "M": m, "n_test": int(err.size),
        "energy_mae": float(err.mean()), "energy_pci": pci, "pci_band": [lo, hi], "pci_in_band": lo <= pci <= hi,
        "energy_lci": float(np.mean(2 * 1.96 * Es)),
        "force_s": t.force_s, "energy_s": t.energy_s, "train_s": t.force_s + t.energy_s,
        "energy_ms_per_frame": per_frame_ms(lambda r: em.predict(r), traj.R[ev]),
        "energy_mean_ms_per_frame": per_frame_ms(lambda r: em.predict(r, return_std=False), traj.R[ev]),
        "force_mean_ms_per_frame": per_frame_ms(lambda r: fm.predict(r, return_std=False), traj.R[ev]),
        "n_subset": em.info["n_subset"], "n_calibration": em.info["n_calibration"],
        "calibration_scale": em.scale,
        "energy_gp_mae": float(err_gp.mean()),
        "energy_gp_fit_s": t_gp,
        "force_mae_aff": float(np.mean(np.abs(f_aff - traj.F[sub]))),
        "force_mae_conservative": float(np.mean(np.abs(f_con - traj.F[sub]))),
        "n_conservative": int(sub.size),
    }


def peer_row(mol: str, labels: str, m: int, work: Path) -> dict:
    from aff_app.peers.sgdml import peer_available, run_sgdml, sgdml_predict, write_sgdml_dataset

    if not peer_available():
        return {"peer": "sgdml package not installed (bash scripts/setup.sh --dev installs it)"}
    traj, tr, ev, sym = reproduction_split(mol, labels, m)
    from aff_app.reproduce.planning import make_split

    split = make_split(traj.n_frames, 2000, 200, seed=0)
    d = work / f"{mol}_{labels}"
    d.mkdir(parents=True, exist_ok=True)
    path = write_sgdml_dataset(d / "train.npz", f"{mol}_{labels}_train", traj.R[tr], traj.z, traj.E[tr], traj.F[tr])
    vpath = write_sgdml_dataset(d / "valid.npz", f"{mol}_{labels}_valid", traj.R[split.valid], traj.z,
                                traj.E[split.valid], traj.F[split.valid])
    r = run_sgdml(d, path, vpath, m, split.valid.size, timeout_s=1800, n_atoms=traj.n_atoms)
    if not r.ok:
        return {"peer_M": m, "peer": f"failed: {r.reason}"}
    E, F = sgdml_predict(r.model_path, traj.R[ev])
    return {"peer_M": m, "peer_s": r.wall_s, "peer_energy_mae": float(np.mean(np.abs(E - traj.E[ev]))),
            "peer_force_mae": float(np.mean(np.abs(F - traj.F[ev]))), "peer_sigma": r.sigma}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=list(PAPER_M))
    ap.add_argument("--labels", nargs="+", default=["md17", "rmd17"], choices=["md17", "rmd17"])
    ap.add_argument("--m", type=int, help="AFF training frames (default: the paper's M per molecule)")
    ap.add_argument("--peer-m", type=int, default=200, help="the sgdml package's training frames (default 200)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--n-conservative", type=int, default=500)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="aff_bench_energy_") as tmp:
        for mol in args.molecules:
            for labels in args.labels:
                t0 = time.perf_counter()
                row = aff_row(mol, labels, args.m or PAPER_M[mol], args.n_conservative)
                if not args.no_peer:
                    row.update(peer_row(mol, labels, args.peer_m, Path(tmp)))
                row["row_s"] = time.perf_counter() - t0
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    args.out.write_text(json.dumps(rows, indent=1))
    print()
    print("| molecule | labels | M | energy MAE | PCI(95%) [4σ band] | train s (force + energy) | ms/frame E (mean only) "
          "| energy GP MAE | sgdml pkg M: MAE, s | force MAE AFF / conservative |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peer = (f"{r['peer_M']}: {r['peer_energy_mae']:.3f}, {r['peer_s']:.0f}" if "peer_energy_mae" in r
                else r.get("peer", "—"))
        print(f"| {r['molecule']} | {r['labels']} | {r['M']} | {r['energy_mae']:.3f} | {100 * r['energy_pci']:.1f}% "
              f"[{100 * r['pci_band'][0]:.1f}–{100 * r['pci_band'][1]:.1f}] | {r['train_s']:.0f} ({r['force_s']:.0f} + "
              f"{r['energy_s']:.0f}) | {r['energy_ms_per_frame']:.1f} ({r['energy_mean_ms_per_frame']:.1f}) | "
              f"{r['energy_gp_mae']:.3f} | {peer} | "
              f"{r['force_mae_aff']:.3f} / {r['force_mae_conservative']:.3f} |")
    print("Units: kcal/mol, s, ms; force MAE kcal/mol/Å on the first "
          f"{rows[0]['n_conservative'] if rows else 0} test frames; PCI of the 2,000 held-out energies.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

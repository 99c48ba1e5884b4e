"""AFF against its peers on rMD17 (issue 16): one run, one table, the same 2,000 held-out frames for every model.

For each molecule, the learning curves of ``aff_app.workflows.learning.learning_curve`` — the pipeline the
Compare page runs — for AFF, the DCF-style direct-force network, the sgdml package (``sgdml all``) and
our sGDML, every point tested on the same 2,000 frames (seed 0) with means only (the GP sds of 2,000
frames at M = 1,600 cost minutes and are measured elsewhere). Prints one row per (molecule, model, M)
— force MAE, energy MAE, training time, prediction time per frame — then the ratios against AFF at
the same M, and the conservation check of models trained at ``--conservation-m`` frames of
``--conservation`` (NVE drift, closed-loop work, Jacobian asymmetry). Not a test: about an hour.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_peers.py --out docs/bench_peers.json \
        | tee docs/bench_peers_run.log
    .venv/bin/python benchmarks/bench_peers.py --molecules uracil --sizes 200 --package-sizes 100 --no-conservation
    .venv/bin/python benchmarks/bench_peers.py --report docs/bench_peers.json    # the markdown tables of a run

Training time is the whole fit a user waits for: AFF's force fit plus its energy model, the package's
``sgdml all`` (its σ search included), the network's epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aff_app.io.files import load_trajectory  # noqa: E402
from aff_app.reproduce.settings import DEFAULT_DATA_DIR  # noqa: E402
from aff_app.symmetry import detect_symmetry  # noqa: E402
from aff_app.workflows.learning import learning_curve  # noqa: E402

N_TEST = 2000


def curve(traj, sym, mode: str, sizes, log) -> list[dict]:
    t = time.perf_counter()
    rows = learning_curve(traj, [mode], sizes, n_test=N_TEST, seed=0, symmetry=sym, with_std=False)
    for r in rows:
        log(f"  {r['model']:<14} M={r['M']:<5} {r['status']:<11} force MAE {fmt(r['force_mae'])}  energy MAE "
            f"{fmt(r['energy_mae'])}  train {fmt(r['train_s'], '.1f')} s  predict {fmt(r['predict_ms'])} ms/frame"
            + (f"  ({r['note'][:160]})" if r["note"] else ""))
    log(f"  ({mode}: {time.perf_counter() - t:.0f} s)")
    return rows


def fmt(v, spec=".3g") -> str:
    return "—" if v is None else format(v, spec)


def ratios(rows: list[dict], log) -> list[dict]:
    """Each peer point against AFF at the same molecule and M: force MAE, energy MAE, training and prediction time."""
    out = []
    aff = {(r["molecule"], r["M"]): r for r in rows if r["mode"] == "aff" and r["status"] == "ok"}
    for r in rows:
        a = aff.get((r["molecule"], r["M"]))
        if r["mode"] == "aff" or a is None or r["status"] != "ok":
            continue
        q = {"molecule": r["molecule"], "model": r["model"], "M": r["M"]}
        for key in ("force_mae", "energy_mae", "train_s", "predict_ms"):
            q[f"{key}_ratio"] = (r[key] / a[key]) if r[key] and a[key] else None
        out.append(q)
        log(f"  {r['molecule']:<9} {r['model']:<14} M={r['M']:<5} force MAE ×{fmt(q['force_mae_ratio'])}  energy MAE "
            f"×{fmt(q['energy_mae_ratio'])}  training time ×{fmt(q['train_s_ratio'])}  prediction ×{fmt(q['predict_ms_ratio'])}")
    return out


def conservation(molecule: str, m: int, steps: int, log, dcf_m: int = 1000) -> list[dict]:
    from aff_app.workflows import pipeline
    from aff_app.workflows.conservation import ConservationSettings, conservation_check
    from aff_app.figures.conservation import conservation_table
    from aff_app.workflows.force_fields import force_fields
    from aff_app.workflows.kinds import MODE_LABELS

    traj = load_trajectory(DEFAULT_DATA_DIR / f"{molecule}.npz", label_set="rmd17")
    settings = ConservationSettings(n_steps=steps, dt_fs=0.5, temperature_K=300.0)
    reports = []
    start = None
    # the network also at M = 1000: at the GPs' M it is far less accurate, and its dynamics may not hold together
    for mode, mm in (("aff", m), ("sgdml", m), ("sgdml-package", m), ("dcf", m), ("dcf", dcf_m)):
        trained = pipeline.train(traj, n_train=mm, n_test=N_TEST, seed=0, settings=pipeline.TrainSettings(mode=mode))
        # the same start for every model: a test frame of the first split (seed 0 draws the same test frames
        # for every M only by chance, so the first one is checked to be none of the later models' training frames)
        start = trained.record.test_idx[0] if start is None else start
        if start in set(trained.force.train_idx.tolist()):
            log(f"  warning: the start frame {start} is a training frame of {mode} M={mm}")
        for f in force_fields(f"{MODE_LABELS[mode]} M={mm}", trained.force, trained.energy):
            t = time.perf_counter()
            rep = conservation_check(f.name, f.forces, f.z, traj.R[start], energy=f.energy, settings=settings)
            reports.append(rep)
            log(f"  {f.name:<28} {rep.energy_source:<13} drift {fmt(rep.nve.drift, '+.3g')} kcal/mol/ps  loop |W| "
                f"{fmt(rep.loop_work)} kcal/mol (/gross {fmt(rep.loop_ratio)})  Jacobian asymmetry "
                f"{fmt(rep.jacobian_asymmetry)}  ({time.perf_counter() - t:.0f} s)"
                + (f"  stopped: {rep.nve.stopped_early} (max |E_total − E_total(0)| "
                   f"{fmt(rep.nve.max_deviation)} kcal/mol)" if rep.nve.stopped_early else ""))
    return conservation_table(reports)


def train_total(r: dict) -> float | None:
    """Training time of a row: the force fit plus the energy fit when there is one (s)."""
    if r.get("train_s") is None:
        return None
    return r["train_s"] + (r.get("energy_train_s") or 0.0)


def report(result: dict) -> str:
    """Markdown tables of a finished run: every point, the ratios against AFF, the conservation check."""
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    out = ["| molecule | model | M | force MAE (kcal/mol/Å) | energy MAE (kcal/mol) | training (s) | prediction (ms/frame) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['molecule']} | {r['model']} | {r['M']} | {fmt(r['force_mae'])} | {fmt(r['energy_mae'])} | "
                   f"{fmt(train_total(r), '.3g')} | {fmt(r['predict_ms'])} |")
    skipped = [r for r in result["rows"] if r["status"] != "ok"]
    for r in skipped:
        out.append(f"| {r['molecule']} | {r['model']} | {r['M']} | {r['status']}: {r['note'][:120]} | | | |")
    aff = {(r["molecule"], r["M"]): r for r in rows if r["mode"] == "aff"}
    out += ["", "| molecule | peer | M | force MAE ÷ AFF's | energy MAE ÷ AFF's | training time ÷ AFF's |", "|---|---|---|---|---|---|"]
    for r in rows:
        a = aff.get((r["molecule"], r["M"]))
        if r["mode"] == "aff" or a is None:
            continue
        e = (r["energy_mae"] / a["energy_mae"]) if r["energy_mae"] and a["energy_mae"] else None
        out.append(f"| {r['molecule']} | {r['model']} | {r['M']} | {fmt(r['force_mae'] / a['force_mae'])} | {fmt(e)} | "
                   f"{fmt(train_total(r) / train_total(a))} |")
    if result.get("conservation"):
        out += ["", "| force field | potential | NVE drift (kcal/mol/ps) | loop \\|W\\| (kcal/mol) | loop W / gross | "
                "Jacobian asymmetry | stopped early |", "|---|---|---|---|---|---|---|"]
        for c in result["conservation"]:
            out.append(f"| {c['model']} | {c['potential']} | {fmt(c['NVE drift (kcal/mol/ps)'], '+.3g')} | "
                       f"{fmt(c['loop work |W| (kcal/mol)'])} | {fmt(c['loop work / gross work'])} | "
                       f"{fmt(c['Jacobian asymmetry'])} | {c['stopped early'] or ''} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=["ethanol", "uracil", "aspirin"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 1600],
                    help="M of AFF and the DCF-style network on --curve-molecules (default 200 1000 1600)")
    ap.add_argument("--curve-molecules", nargs="*", default=["uracil", "aspirin"],
                    help="molecules with the whole curve; the others get --other-sizes")
    ap.add_argument("--other-sizes", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--package-sizes", type=int, nargs="*", default=[200, 500],
                    help="M of the sgdml package (its 3MN-sided kernels, four copies: refused over the memory "
                         "budget; default 200 500)")
    ap.add_argument("--sgdml-sizes", type=int, nargs="*", default=[200], help="M of our sGDML (default 200)")
    ap.add_argument("--conservation", default="uracil", help="molecule of the conservation check")
    ap.add_argument("--conservation-m", type=int, default=200)
    ap.add_argument("--conservation-steps", type=int, default=2000)
    ap.add_argument("--no-conservation", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None, help="print the markdown tables of a finished run's JSON")
    args = ap.parse_args(argv)
    if args.report is not None:
        print(report(json.loads(args.report.read_text())))
        return 0

    def log(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.perf_counter()
    rows: list[dict] = []
    result: dict = {"n_test": N_TEST, "labels": "rmd17", "rows": rows}
    for mol in args.molecules:
        traj = load_trajectory(DEFAULT_DATA_DIR / f"{mol}.npz", label_set="rmd17")
        sym = detect_symmetry(traj.R, traj.z, n_samples=200, seed=0)
        sizes = args.sizes if mol in args.curve_molecules else args.other_sizes
        log(f"{mol} (rMD17, {traj.n_frames} frames, {traj.n_atoms} atoms; {N_TEST} test frames, seed 0)")
        for mode, ms in (("aff", sizes), ("dcf", sizes), ("sgdml-package", args.package_sizes),
                         ("sgdml", args.sgdml_sizes)):
            if not ms:
                continue
            for r in curve(traj, sym, mode, ms, log):
                rows.append({"molecule": mol, **{k: v for k, v in r.items()}})
            if args.out:
                args.out.write_text(json.dumps(result, indent=1))
    log("ratios against AFF at the same M (below 1: the peer is better / faster)")
    result["ratios"] = ratios(rows, log)
    if not args.no_conservation:
        log(f"conservation check: {args.conservation} rMD17, M = {args.conservation_m}, "
            f"{args.conservation_steps} steps of 0.5 fs from 300 K")
        result["conservation"] = conservation(args.conservation, args.conservation_m, args.conservation_steps, log)
    result["wall_s"] = time.perf_counter() - t0
    log(f"done in {result['wall_s'] / 60:.1f} min")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

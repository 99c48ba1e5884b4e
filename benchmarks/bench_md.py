"""Milliseconds per MD step: AFF (mean only; mean + sd every step; mean + sd every k steps) against
GFN2-xTB (tblite) and the sgdml package's ASE calculator, same molecule, same start, same run (issue 17).

Every calculator drives the same harness (``aff_app.workflows.md.run_md``: ASE velocity Verlet,
0.5 fs, 300 K, the same start frame and velocities, the steps at one BLAS/OpenMP thread, AFF's sd
at the recorded steps on every core: run_md's defaults), so the ASE integrator's own overhead is in
every figure. Data: the bundled GFN2-xTB samples (the model and xTB describe the same surface).
AFF is trained at M frames (seed 0) through the pipeline; the package at the same M where that
is affordable here (``--package-m``, default 200: its dense solve at uracil M = 1000 is a
36,000-sided kernel, 10 GB), and its per-step time grows linearly with M, so AFF at M against
the package at a smaller M understates AFF's advantage. GFN2-xTB is timed with 1 and 2 OpenMP
threads and the faster counts. Not a test.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_md.py --out docs/bench_md.json | tee docs/bench_md_run.log
    .venv/bin/python benchmarks/bench_md.py --report docs/bench_md.json      # the markdown table
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

from aff_app.calculator import AFFCalculator  # noqa: E402
from aff_app.io.files import load_trajectory  # noqa: E402
from aff_app.workflows import pipeline  # noqa: E402
from aff_app.workflows.md import MDSettings, run_md, xtb_calculator  # noqa: E402
from aff_app.workflows.pipeline import TrainSettings  # noqa: E402
from aff_app.workflows.training import DEFAULT_SYMMETRY_FRAMES, resolve_symmetry, split_frames  # noqa: E402

CASES = [("benzene", 200), ("uracil", 1000)]


def timed(calc, z, R0, steps: int, record_every: int, *, with_sd: bool, with_energy: bool, threads=1) -> dict:
    # a short run first, not timed: the first steps of a process's first run took twice as long (first-touch
    # of the model's arrays, thread-pool and library set-up), which landed on whichever row came first
    run_md(calc, z, R0, MDSettings(n_steps=20, record_every=10), with_sd=with_sd, with_energy=with_energy,
           threads=threads)
    s = MDSettings(n_steps=steps, record_every=record_every)
    run = run_md(calc, z, R0, s, with_sd=with_sd, with_energy=with_energy, threads=threads)
    if run.stop_reason != "completed":
        raise RuntimeError(f"benchmark run stopped: {run.message}")
    return {"ms_per_step": run.ms_per_step, "steps": steps, "record_every": record_every,
            "with_sd": with_sd, "with_energy": with_energy}


def package_calculator(trained, tmp: Path):
    from sgdml.intf.ase_calc import SGDMLCalculator

    path = tmp / "package_model.npz"
    np.savez(path, **trained.force.arrays)
    return SGDMLCalculator(str(path))


def bench_case(name: str, M: int, steps: int, package_m: int, tmp: Path) -> dict:
    traj = load_trajectory(ROOT / "sample_data" / f"{name}.npz")
    split = split_frames(traj.n_frames, M, seed=0)
    idx = np.asarray(split.train)
    test = np.setdiff1d(np.arange(traj.n_frames), idx)
    R0 = traj.R[test[0]]
    out = {"molecule": name, "M": M, "steps": steps, "start_frame": int(test[0])}
    t0 = time.perf_counter()
    # the permutation group and PE sets found in the data, as pipeline.train does (benzene: 12, two sets of 6)
    symmetry = resolve_symmetry(traj, n_samples=DEFAULT_SYMMETRY_FRAMES, seed=0)
    aff = pipeline.fit(traj, idx, TrainSettings(), symmetry=symmetry)
    out["aff_fit_s"] = time.perf_counter() - t0
    fm, em = aff.force, aff.energy
    out["aff_sets"] = [int(len(s)) for s in fm.pe_sets]
    out["aff_perms"] = int(fm.perms.shape[0])
    calc = AFFCalculator(fm, em)
    fm.predict(R0)  # factors and the fast mean's vectors before the clock starts
    fm.predict_mean(R0)
    rows = {}
    rows["aff_mean"] = timed(calc, traj.z, R0, steps, steps, with_sd=False, with_energy=False)
    rows["aff_mean_energy"] = timed(AFFCalculator(fm, em), traj.z, R0, steps, 1, with_sd=False, with_energy=True)
    rows["aff_mean_sd_every_step"] = timed(AFFCalculator(fm, em), traj.z, R0, steps, 1, with_sd=True, with_energy=False)
    for k in (10, 20, 40):
        rows[f"aff_mean_sd_every_{k}"] = timed(AFFCalculator(fm, em), traj.z, R0, steps, k, with_sd=True,
                                               with_energy=True)
    xtb = {t: timed(xtb_calculator(), traj.z, R0, steps, steps, with_sd=False, with_energy=False, threads=t)
           for t in (1, 2)}
    best = min(xtb, key=lambda t: xtb[t]["ms_per_step"])
    rows["xtb"] = dict(xtb[best], threads=best, other_threads_ms=xtb[3 - best]["ms_per_step"])
    # the package at package_m frames (the first of AFF's, so a subset of the same split)
    pm = min(package_m, M)
    t0 = time.perf_counter()
    pkg = pipeline.fit(traj, idx[:pm], TrainSettings(mode="sgdml-package"))
    out["package_fit_s"] = time.perf_counter() - t0
    out["package_M"] = pm
    rows["package"] = timed(package_calculator(pkg, tmp), traj.z, R0, steps, steps, with_sd=False, with_energy=True)
    if pm != M:  # AFF at the package's M too: the equal-M ratio
        aff_small = pipeline.fit(traj, idx[:pm], TrainSettings(energy=False), symmetry=symmetry).force
        aff_small.predict_mean(R0)
        rows["aff_mean_at_package_M"] = timed(AFFCalculator(aff_small), traj.z, R0, steps, steps, with_sd=False,
                                              with_energy=False)
    out["rows"] = rows
    x = rows["xtb"]["ms_per_step"]
    out["ratios"] = {
        "xtb_over_aff_mean_sd_every_step": x / rows["aff_mean_sd_every_step"]["ms_per_step"],
        "xtb_over_aff_mean_sd_every_10": x / rows["aff_mean_sd_every_10"]["ms_per_step"],
        "xtb_over_aff_mean_sd_every_20": x / rows["aff_mean_sd_every_20"]["ms_per_step"],
        "xtb_over_aff_mean_sd_every_40": x / rows["aff_mean_sd_every_40"]["ms_per_step"],
        "package_over_aff_mean": rows["package"]["ms_per_step"] / rows["aff_mean"]["ms_per_step"],
    }
    if "aff_mean_at_package_M" in rows:
        out["ratios"]["package_over_aff_mean_equal_M"] = (rows["package"]["ms_per_step"]
                                                          / rows["aff_mean_at_package_M"]["ms_per_step"])
    return out


def report(results: list[dict]) -> str:
    lines = ["| molecule | M (AFF) | AFF mean | AFF mean + E | AFF mean + sd every step | AFF + sd, E every 10 | "
             "AFF + sd, E every 20 | AFF + sd, E every 40 | GFN2-xTB | sgdml package (M) | xTB / AFF+sd every step | "
             "xTB / AFF+sd every 10 | xTB / AFF+sd every 20 | xTB / AFF+sd every 40 | package / AFF mean |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        w = r["rows"]
        ms = {k: v["ms_per_step"] for k, v in w.items()}
        q = r["ratios"]
        pkg = f"{ms['package']:.1f} (M = {r['package_M']})"
        eq = (f"; {q['package_over_aff_mean_equal_M']:.0f}× at M = {r['package_M']}"
              if "package_over_aff_mean_equal_M" in q else "")
        lines.append(
            f"| {r['molecule']} | {r['M']} | {ms['aff_mean']:.2f} | {ms['aff_mean_energy']:.2f} | "
            f"{ms['aff_mean_sd_every_step']:.1f} | {ms['aff_mean_sd_every_10']:.2f} | {ms['aff_mean_sd_every_20']:.2f} | "
            f"{ms['aff_mean_sd_every_40']:.2f} | "
            f"{ms['xtb']:.2f} ({w['xtb']['threads']} thread{'s' if w['xtb']['threads'] > 1 else ''}) | {pkg} | "
            f"{q['xtb_over_aff_mean_sd_every_step']:.2f} | {q['xtb_over_aff_mean_sd_every_10']:.2f} | "
            f"{q['xtb_over_aff_mean_sd_every_20']:.2f} | {q['xtb_over_aff_mean_sd_every_40']:.2f} | "
            f"{q['package_over_aff_mean']:.0f}×{eq} |")
    return "\n".join(lines) + "\n\nms per MD step (velocity Verlet, 0.5 fs, 300 K, ASE's integrator included)."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--package-m", type=int, default=200)
    ap.add_argument("--molecules", default=",".join(n for n, _ in CASES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--report", default=None, help="print the markdown table of a results file and exit")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())["results"]))
        return
    wanted = args.molecules.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, M in CASES:
            if name not in wanted:
                continue
            r = bench_case(name, M, args.steps, args.package_m, Path(tmp))
            results.append(r)
            print(json.dumps({"molecule": name, "M": M, "ms": {k: round(v["ms_per_step"], 3) for k, v in r["rows"].items()},
                              "ratios": {k: round(v, 2) for k, v in r["ratios"].items()}}), flush=True)
    print(report(results))
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=1))


if __name__ == "__main__":
    main()

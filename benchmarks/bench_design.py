"""Sequential design (variance selection) against random selection on rMD17 pools (issue 17, item 3).

For each molecule: all 5000 frames of ``../shared/data/md17/<molecule>.npz`` (rMD17 labels ``E``, ``F``)
are the pool; 1000 of them are held out (the same for both strategies), M0 = 20 random frames start
both strategies, each round adds 20 frames (by the largest predicted force variance, or uniformly at
random), up to M_max = 400 (``aff_app.workflows.design.run_design``, AFF, γ and λ searched at every
refit). Prints one row per round and strategy, and the answer: the frames variance selection needed
to reach random selection's force MAE at M_max, and that number over M_max (target: ≤ 60%).
Not a test (tens of minutes).

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_design.py --out docs/bench_design.json \\
        > docs/bench_design_run.log 2>&1 &
    .venv/bin/python benchmarks/bench_design.py --molecules uracil --budget 120 --test 500      # a quick look
    .venv/bin/python benchmarks/bench_design.py --report docs/bench_design.json                 # markdown table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aff_app.io.files import load_trajectory  # noqa: E402
from aff_app.workflows.design import DesignSettings, frames_to_reach, run_design  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "md17"


def run_one(molecule: str, settings: DesignSettings, *, label: str) -> dict:
    traj = load_trajectory(DATA / f"{molecule}.npz", label_set="rmd17")
    t0 = time.perf_counter()
    last = [0.0]

    def progress(f: float, msg: str) -> None:
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"  [{time.perf_counter() - t0:7.0f} s] {100 * f:5.1f}% {msg[:90]}", flush=True)

    def on_round(res) -> None:
        r = res.rows[-1]
        print(f"{label:<22} {r.strategy:<9} round {r.round:>2}  M = {r.M:>4}  force MAE {r.force_mae:.4f}  RMSE {r.force_rmse:.4f}  "
              f"max {r.force_max_error:.2f}  PCI {r.pci:.3f}  γ {r.gamma:.3g}  λ {r.lam:.2e}  fit {r.fit_s:6.1f} s  eval {r.eval_s:5.1f} s  "
              f"select {r.select_s:6.1f} s", flush=True)

    res = run_design(traj, settings=settings, progress=progress, on_round=on_round)
    reached = frames_to_reach(res)
    out = {"molecule": molecule, "label": label, "n_frames": traj.n_frames, "elapsed_s": time.perf_counter() - t0,
           "result": res.to_dict(), "reached": None if reached is None else reached.to_dict()}
    print(f"== {label}: {reached.sentence() if reached else 'no answer'}  ({out['elapsed_s']:.0f} s)", flush=True)
    return out


def report(path: Path) -> str:
    runs = json.loads(path.read_text())["runs"]
    lines = ["| molecule | variant | random MAE at M_max (kcal/mol/Å) | variance MAE at M_max | frames variance needed | "
             "ratio | RMSE random / variance | max error random / variance | run time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        rows = run["result"]["rows"]
        last = {s: max((r for r in rows if r["strategy"] == s), key=lambda r: r["M"]) for s in ("variance", "random")}
        rc = run["reached"]
        need = "not reached" if rc["M"] is None else f"{rc['M']:.0f}"
        ratio = "—" if rc["ratio"] is None else f"{100 * rc['ratio']:.0f}%"
        lines.append(f"| {run['molecule']} | {run['label'].split(':', 1)[-1].strip()} | {last['random']['force_mae']:.3f} "
                     f"(M = {last['random']['M']}) | {last['variance']['force_mae']:.3f} | {need} | {ratio} | "
                     f"{last['random']['force_rmse']:.3f} / {last['variance']['force_rmse']:.3f} | "
                     f"{last['random'].get('force_max_error', float('nan')):.1f} / "
                     f"{last['variance'].get('force_max_error', float('nan')):.1f} | {run['elapsed_s'] / 60:.0f} min |")
    lines += ["", "Per round (force MAE, kcal/mol/Å):", ""]
    for run in runs:
        rows = run["result"]["rows"]
        ms = sorted({r["M"] for r in rows})
        by = {(r["strategy"], r["M"]): r for r in rows}
        lines.append(f"**{run['label']}**")
        lines.append("")
        lines.append("| M | " + " | ".join(str(m) for m in ms) + " |")
        lines.append("|---|" + "---|" * len(ms))
        for s in ("variance", "random"):
            lines.append(f"| {s} | " + " | ".join(f"{by[(s, m)]['force_mae']:.3f}" if (s, m) in by else "—"
                                                   for m in ms) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", nargs="+", default=["uracil", "aspirin"])
    ap.add_argument("--initial", type=int, default=20)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--budget", type=int, default=400)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hyper", default="every", choices=["every", "doubling"],
                    help="γ, λ search policy (default every: the strictest; the library's default is doubling)")
    ap.add_argument("--scores", nargs="+", default=["sum"], choices=["sum", "max", "normalised", "alc"],
                    help="variance scores to run (each a separate run of both strategies)")
    ap.add_argument("--candidates", type=int, default=None, help="candidates scored per round (default: the whole pool)")
    ap.add_argument("--out", type=Path, help="write every run here (JSON); rewritten after each run")
    ap.add_argument("--report", type=Path, help="print the markdown table of a JSON written by --out, and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    runs = []
    for molecule in args.molecules:
        for score in args.scores:
            settings = DesignSettings(n_initial=args.initial, batch=args.batch, budget=args.budget, n_test=args.test,
                                      seed=args.seed, hyper=args.hyper, score=score, n_candidates=args.candidates)
            runs.append(run_one(molecule, settings, label=f"{molecule}: score {score}, hyper {args.hyper}"))
            if args.out:
                args.out.write_text(json.dumps({"command": " ".join(sys.argv), "runs": runs}, indent=1))
    for run in runs:
        rc = run["reached"]
        ratio = "not reached" if rc["ratio"] is None else f"{rc['M']:.0f}/{rc['target_M']} = {rc['ratio']:.2f}"
        print(f"{run['label']}: frames variance needed / M_max: {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

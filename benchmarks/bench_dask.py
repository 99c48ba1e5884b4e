"""The quick reproduction serial against a two-worker Dask LocalCluster, in one run (issue 18, scale-out).

Runs :func:`aff_app.reproduce.run.run_reproduction` on ``quick_settings`` (without the sgdml
package, whose runs stay serial in the driver either way) twice: first serially in this process,
then with ``--scheduler local:N`` (a ``LocalCluster`` of N one-thread worker processes, started
inside the timed region). Reported: wall times (the cluster's start-up separately), their ratio,
and whether the two tables are the same — the same points in the same order, and the largest
relative difference of every metric (force/energy MAE, PCI, LCI, γ, λ).

Usage (several minutes on the 2-core machine; run in the background):

    nohup .venv/bin/python benchmarks/bench_dask.py --out docs/bench_dask.json > docs/bench_dask_run.log 2>&1 &
    .venv/bin/python benchmarks/bench_dask.py --molecules uracil --workers 2
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

METRICS = ("force_mae", "energy_mae", "pci", "lci", "l_norm", "gamma", "lam", "energy_gamma", "energy_lam")


def _compare(a: dict, b: dict) -> dict:
    key = lambda p: (p["molecule"], p["label_set"], p["method"], p["M"])  # noqa: E731
    same_order = [key(p) for p in a["points"]] == [key(p) for p in b["points"]]
    worst, bitwise, n = 0.0, 0, 0
    per_point = []
    for p, q in zip(a["points"], b["points"]):
        diffs = {}
        for k in METRICS:
            x, y = p.get(k), q.get(k)
            if x is None or y is None:
                continue
            n += 1
            bitwise += int(x == y)
            d = abs(x - y) / max(abs(x), 1e-300)
            diffs[k] = d
            worst = max(worst, d)
        per_point.append({"point": list(key(p)), "max_rel_diff": max(diffs.values(), default=0.0)})
    rows_same = [(r["molecule"], r["label_set"], r["m_aff"]) for r in a["rows"]] == \
        [(r["molecule"], r["label_set"], r["m_aff"]) for r in b["rows"]]
    return {"same_points_same_order": same_order, "same_rows": rows_same, "same_skipped": a["skipped"] == b["skipped"],
            "values_compared": n, "values_bitwise_equal": bitwise, "max_rel_diff": worst, "per_point": per_point}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecules", nargs="+", default=None, help="default: all four of the reproduction")
    ap.add_argument("--labels", nargs="+", default=None, help="default: md17 rmd17")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON file (default: print only)")
    args = ap.parse_args()

    from aff_app.parallel import SchedulerChoice, open_executor
    from aff_app.reproduce.run import run_reproduction
    from aff_app.reproduce.settings import quick_settings

    over = {"peer": False}
    if args.molecules:
        over["molecules"] = tuple(args.molecules)
    if args.labels:
        over["label_sets"] = tuple(args.labels)
    settings = quick_settings(**over)
    print(f"settings: {settings.molecules} {settings.label_sets}, AFF M = {settings.aff_m} and {settings.curve_m}, "
          f"baselines {settings.baseline_modes} at {settings.baseline_m}", flush=True)

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    serial = run_reproduction(settings)
    t_serial = time.perf_counter() - t0
    print(f"serial: {t_serial:.1f} s", flush=True)

    arrivals = []
    t0 = time.perf_counter()
    with open_executor(SchedulerChoice(kind="local", n_workers=args.workers)) as ex:
        t_start = time.perf_counter() - t0
        dask = run_reproduction(settings, executor=ex,
                                on_point=lambda p: arrivals.append(round(time.perf_counter() - t0, 2)))
        t_run = time.perf_counter() - t0
    t_dask = time.perf_counter() - t0
    print(f"dask ({args.workers} workers): {t_dask:.1f} s (cluster start {t_start:.1f} s)", flush=True)
    cmp = _compare(serial, dask)
    print(json.dumps({k: v for k, v in cmp.items() if k != "per_point"}), flush=True)

    out = {
        "what": "quick reproduction (quick_settings, peer=False): serial vs Dask LocalCluster, same process, same run",
        "settings": settings.to_dict(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": load0, "loadavg_after": os.getloadavg(),
                    "note": "2-core machine shared with other work: wall times vary run to run"},
        "n_points": len(serial["points"]),
        "serial_s": t_serial,
        "dask_s": t_dask,
        "dask_cluster_start_s": t_start,
        "dask_run_s": t_run - t_start,
        "dask_workers": args.workers,
        "speedup": t_serial / t_dask,
        "speedup_without_start": t_serial / max(t_run - t_start, 1e-9),
        "dask_point_arrivals_s": arrivals,
        "identical": cmp,
        "sum_of_train_s": {"serial": float(np.sum([p["train_s"] for p in serial["points"]])),
                           "dask": float(np.sum([p["train_s"] for p in dask["points"]]))},
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()

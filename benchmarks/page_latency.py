"""Light interactions while a fit runs, without browsers: the server's own share of the latency (issue 19).

One process, as the Streamlit server is: a session (Streamlit's AppTest, the real pages) switches between
the Data and Symmetry pages every 0.3 s while the default fit (benzene, M = 200, γ and λ searched) runs in
a worker thread, as the job queue runs it. Prints p50/p95/max of the page runs. With ``--limit-blas`` the
fit's BLAS uses one thread. Compare with benchmarks/load_test.py, where the browsers share the machine.

    .venv/bin/python benchmarks/page_latency.py > docs/page_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AFF_WORKSPACE", tempfile.mkdtemp(prefix="aff_latency_ws_"))

from streamlit.testing.v1 import AppTest  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from aff_app.io.files import load_trajectory  # noqa: E402
from aff_app.workflows import pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-blas", action="store_true")
    args = parser.parse_args()
    traj = load_trajectory(ROOT / "sample_data" / "benzene.npz")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/symmetry.py").run()  # the first visit detects the PE sets: not a light interaction
    fit_s = []

    def fit() -> None:
        t = time.perf_counter()
        with threadpool_limits(1 if args.limit_blas else None):
            pipeline.train(traj, n_train=200, n_test=50, seed=0)
        fit_s.append(time.perf_counter() - t)

    worker = threading.Thread(target=fit)
    worker.start()
    runs = []
    while worker.is_alive():
        for page in ("pages/data.py", "pages/symmetry.py"):
            t = time.perf_counter()
            at.switch_page(page).run()
            runs.append(time.perf_counter() - t)
        time.sleep(0.3)
    runs.sort()
    report = {"fit_s": fit_s[0], "n": len(runs), "p50_s": runs[len(runs) // 2],
              "p95_s": runs[int(0.95 * (len(runs) - 1))], "max_s": runs[-1], "limit_blas": args.limit_blas}
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Soak test (issue 6): 20 train → predict → remove cycles in one app process; memory must not keep growing.

The cycles go through the app itself (Streamlit's AppTest runs the real pages in this process, with one
session): the Train page trains a small AFF model (M = 20, fixed γ and λ, on the uracil sample), the
Predictions page evaluates it on its held-out frames (memoised in the session), and the Train page removes
the older model again, as a user tidying up would. The resident set size (RSS) of the process is read after
every cycle; after a warm-up of 5 cycles (imports, caches, allocator pools) it may not grow by more than
50 MB over the remaining 15.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from aff_app.io.files import load_trajectory
from aff_app.workflows.registry import ModelRegistry
from aff_app.ui import state

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
CYCLES = 20
WARM_UP = 5
MAX_GROWTH_MB = 50.0
GAMMA, LAM = 4.0, 1e-8


def rss_mb() -> float:
    """Resident set size of this process, MB (psutil when installed, else /proc/self/status)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - psutil is optional
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        pytest.skip("cannot read this process's memory use")


pytestmark = pytest.mark.usefixtures("fresh_streamlit_cache")


def test_twenty_train_predict_cycles_do_not_grow_memory():
    traj = load_trajectory(REPO / "sample_data" / "uracil.npz")
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[state.TRAJECTORY] = traj
    at.session_state[state.DEFAULT_SAMPLE_TRIED] = True
    at.session_state[state.MODELS] = ModelRegistry()
    at.switch_page("pages/train.py").run()
    at.radio(key=state.TRAIN_HYPER).set_value("fixed").run()
    at.number_input(key=state.TRAIN_M).set_value(20)
    at.number_input(key=state.TRAIN_N_TEST).set_value(50)
    at.number_input(key=state.TRAIN_GAMMA).set_value(GAMMA)
    at.number_input(key=state.TRAIN_LAM).set_value(LAM)
    at.run()
    assert not at.exception, at.exception

    rss, t0 = [], time.perf_counter()
    for cycle in range(CYCLES):
        at.number_input(key=state.TRAIN_SEED).set_value(cycle)  # a different split (and model) every cycle
        at.text_input(key=state.TRAIN_NAME).set_value(f"cycle {cycle}")
        at.button(key=state.TRAIN_RUN).click().run()
        assert not at.exception, at.exception
        reg = at.session_state[state.MODELS]
        assert reg.names()[-1] == f"cycle {cycle}", reg.names()
        assert reg.get(f"cycle {cycle}").metrics["force_mae"] > 0

        at.switch_page("pages/predictions.py").run()
        assert not at.exception, at.exception
        assert at.selectbox(key=state.PRED_MODEL).value == f"cycle {cycle}"
        assert {m.label: m.value for m in at.metric}["Force MAE (kcal/mol/Å)"] != "—"

        at.switch_page("pages/train.py").run()
        if cycle > 0:  # keep two models: remove the older one like a user tidying up
            at.selectbox(key=state.TRAIN_MANAGE).set_value(f"cycle {cycle - 1}")
            at.button(key=state.TRAIN_REMOVE).click().run()
            assert not at.exception, at.exception
            assert at.session_state[state.MODELS].names() == [f"cycle {cycle}"]
        gc.collect()
        rss.append(rss_mb())

    elapsed = time.perf_counter() - t0
    memo = at.session_state[state.HELD_OUT]
    assert len(memo) <= 8  # the session keeps a bounded number of held-out prediction sets
    growth = rss[-1] - rss[WARM_UP - 1]
    trace = ", ".join(f"{x:.0f}" for x in rss)
    assert growth < MAX_GROWTH_MB, f"RSS grew {growth:.1f} MB from cycle {WARM_UP} to {CYCLES} (MB: {trace})"
    # and no steady climb either: the last 5 cycles are not all above the middle ones by a margin
    assert min(rss[-5:]) < max(rss[WARM_UP:WARM_UP + 5]) + MAX_GROWTH_MB / 2, trace
    print(f"{CYCLES} cycles in {elapsed:.1f} s; RSS MB: {trace}")

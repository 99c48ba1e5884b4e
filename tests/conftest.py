"""Shared fixtures: the repository root and the read-only reference data beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
MD17_DIR = SHARED_DIR / "data" / "md17"


@pytest.fixture(scope="session", autouse=True)
def private_workspace(tmp_path_factory) -> Path:
    """Every test (and the app server of the browser tests) keeps its workspace in a temporary folder.

    Set before any other fixture runs, so the user's ``~/.aff_app/workspace`` is never touched.
    """
    root = tmp_path_factory.mktemp("workspace")
    os.environ["AFF_WORKSPACE"] = str(root)
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The project's root directory."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data/md17`` (real MD17/rMD17 npz files); fails, never skips, when absent."""
    if not MD17_DIR.is_dir() or not any(MD17_DIR.glob("*.npz")):
        pytest.fail(
            f"reference data not found at {MD17_DIR}: the tests need ../shared/data/md17/*.npz "
            "beside the repository (see ../shared/data/README.md)",
            pytrace=False,
        )
    return MD17_DIR


@pytest.fixture
def fresh_streamlit_cache():
    """Empty Streamlit's data cache around a test: st.cache_data survives across AppTest instances."""
    import streamlit as st

    st.cache_data.clear()
    yield
    st.cache_data.clear()


def _binomial_band(level: float, n: int, z: float = 4.0) -> tuple[float, float]:
    """Coverages consistent with a nominal ``level`` on ``n`` independent outcomes: level ± z·√(level(1−level)/n).

    z = 4: a correct interval falls outside with probability ~6e-5 per check, so a failure means
    the interval is off, not bad luck. ``n`` must count independent outcomes (frames, not the
    correlated force components within one frame).
    """
    half = z * (level * (1.0 - level) / n) ** 0.5
    return max(0.0, level - half), min(1.0, level + half)


@pytest.fixture
def binomial_band():
    """The function :func:`_binomial_band` (coverage band around a nominal level)."""
    return _binomial_band

"""Streamlit helpers of the Symmetry and Covariance pages: cached detection and kernels, the active symmetry.

The active symmetry (detected, or the user's override) lives in
``st.session_state[state.SYMMETRY]`` with the fingerprint of its trajectory in
``state.SYMMETRY_FOR``. Other pages read it with :func:`get_symmetry` (None
when it belongs to another data set) or :func:`ensure_symmetry` (detects it
with the default settings when missing).
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from aff_app.gp import covariance as cov
from aff_app.symmetry import SymmetryError, SymmetryInfo, detect_symmetry, parse_pe_sets, user_symmetry
from aff_app.io.trajectory import Trajectory

from aff_app.ui import state

#: Defaults of the detection (the Symmetry page's initial settings).
DEFAULT_METHOD = "data"
DEFAULT_N_SAMPLES = 200
DEFAULT_SEED = 0


# -- cached computations ------------------------------------------------------------------------


@st.cache_data(show_spinner="Searching the permutations the data realises…", max_entries=32)
def detect_cached(fingerprint: str, method: str, n_samples: int, seed: int, *, _R: np.ndarray, _z: np.ndarray) -> SymmetryInfo:
    """``detect_symmetry`` keyed by (trajectory fingerprint, method, n_samples, seed); callers must not mutate it."""
    return detect_symmetry(_R, _z, method=method, n_samples=int(n_samples), seed=int(seed))


@st.cache_data(show_spinner=False, max_entries=32)
def default_gamma_cached(fingerprint: str, *, _R: np.ndarray) -> float:
    """``covariance.default_gamma`` of a trajectory, keyed by its fingerprint."""
    return cov.default_gamma(_R)


@st.cache_data(show_spinner="Computing the kernel's force covariance…", max_entries=64)
def kernel_covariance_cached(fingerprint: str, frames: tuple, gamma: float, perms: np.ndarray | None, *,
                             _R: np.ndarray) -> np.ndarray:
    """``covariance.kernel_force_covariance`` keyed by (fingerprint, frames, γ, permutations or None)."""
    return cov.kernel_force_covariance(_R, list(frames), gamma, perms=perms)


@st.cache_data(show_spinner="Computing the PE set's force covariance…", max_entries=64)
def set_covariance_cached(fingerprint: str, frames: tuple, gamma: float, atoms: tuple, perms: np.ndarray | None, *,
                          _R: np.ndarray) -> np.ndarray:
    """``covariance.set_force_covariance`` keyed by (fingerprint, frames, γ, atoms, permutations or None)."""
    return cov.set_force_covariance(_R, list(frames), gamma, list(atoms), perms=perms)


@st.cache_data(show_spinner="Correlating the forces over the trajectory…", max_entries=16)
def empirical_correlation_cached(fingerprint: str, *, _F: np.ndarray) -> np.ndarray:
    """``covariance.empirical_force_correlation`` keyed by the trajectory fingerprint."""
    return cov.empirical_force_correlation(_F)


# -- the active symmetry ----------------------------------------------------------------------------


def trivial_symmetry(z) -> SymmetryInfo:
    """No symmetry: identity only, every atom its own PE set (method 'user')."""
    z = np.asarray(z)
    return user_symmetry([[i] for i in range(z.size)], z)


def get_symmetry(traj: Trajectory) -> SymmetryInfo | None:
    """The active symmetry if it belongs to ``traj`` (same fingerprint and atom count), else None."""
    sym = st.session_state.get(state.SYMMETRY)
    if not isinstance(sym, SymmetryInfo) or st.session_state.get(state.SYMMETRY_FOR) != traj.fingerprint:
        return None
    return sym if sym.n_atoms == traj.n_atoms else None


def set_active(traj: Trajectory, sym: SymmetryInfo, source: tuple | None = None) -> None:
    """Make ``sym`` the active symmetry of ``traj`` (``source``: the detection it came from)."""
    st.session_state[state.SYMMETRY] = sym
    st.session_state[state.SYMMETRY_FOR] = traj.fingerprint
    if source is not None:
        st.session_state[state.SYMMETRY_SOURCE] = source


def ensure_symmetry(traj: Trajectory) -> SymmetryInfo:
    """The active symmetry of ``traj``; when there is none, detect it (method 'data', 200 frames, seed 0).

    A failed detection falls back to no symmetry (identity only) and says why with ``st.warning``.
    """
    sym = get_symmetry(traj)
    if sym is not None:
        return sym
    source = (traj.fingerprint, DEFAULT_METHOD, DEFAULT_N_SAMPLES, DEFAULT_SEED)
    try:
        sym = detect_cached(*source, _R=traj.R, _z=traj.z)
    except SymmetryError as exc:
        st.warning(f"Symmetry detection failed ({exc}); using no symmetry (each atom its own PE set).")
        sym = trivial_symmetry(traj.z)
    set_active(traj, sym, source)
    return sym


def format_sets(pe_sets) -> str:
    """PE sets as editable text: ``'0 1 2 3 4 5; 6 7 8 9 10 11'`` (singletons included)."""
    return "; ".join(" ".join(str(int(i)) for i in s) for s in pe_sets)


def describe(sym: SymmetryInfo) -> str:
    """Where the active sets come from, in words."""
    if sym.method == "data":
        return f"detected from the data ({sym.n_samples} frames, seed {sym.seed})"
    if sym.method == "graph":
        return "bond-graph automorphisms of the first frame"
    return "your override"


# -- override callbacks (run before the page, so they may set widget state) ---------------------------


def _accept(traj: Trajectory, detected: SymmetryInfo, sets, what: str) -> None:
    try:
        sym = user_symmetry(sets, traj.z, perms=detected.perms, n_samples=detected.n_samples, seed=detected.seed)
    except SymmetryError as exc:
        st.session_state[state.SYMMETRY_ERROR] = f"{what} rejected: {exc}. The sets shown are unchanged."
        return
    set_active(traj, sym)
    st.session_state[state.SYMMETRY_ERROR] = None
    st.session_state[state.SYMMETRY_NOTICE] = (
        f"{what}: {sym.n_sets} PE sets; the PS kernel keeps the {sym.n_perms} of the detected "
        f"{detected.n_perms} permutations that map every set onto itself."
    )
    st.session_state[state.SYM_OVERRIDE_TEXT] = format_sets(sym.pe_sets)


def apply_text(traj: Trajectory, detected: SymmetryInfo) -> None:
    """Callback of "Apply": parse the text area and make it the active sets (errors kept for st.error)."""
    text = st.session_state.get(state.SYM_OVERRIDE_TEXT, "")
    try:
        sets = parse_pe_sets(text, traj.n_atoms)
    except SymmetryError as exc:
        st.session_state[state.SYMMETRY_ERROR] = f"Override rejected: {exc}. The sets shown are unchanged."
        st.session_state[state.SYMMETRY_NOTICE] = None
        return
    _accept(traj, detected, sets, "Override applied")


def merge_sets(traj: Trajectory, detected: SymmetryInfo) -> None:
    """Callback of "Merge": join the chosen sets (1-based numbers) of the active symmetry."""
    sym = get_symmetry(traj) or detected
    chosen = sorted(int(k) - 1 for k in st.session_state.get(state.SYM_MERGE_SETS) or [])
    if len(chosen) < 2:
        st.session_state[state.SYMMETRY_ERROR] = "Choose at least two sets to merge."
        st.session_state[state.SYMMETRY_NOTICE] = None
        return
    merged = np.concatenate([sym.pe_sets[k] for k in chosen])
    rest = [s for k, s in enumerate(sym.pe_sets) if k not in chosen]
    st.session_state[state.SYM_MERGE_SETS] = []
    _accept(traj, detected, [merged, *rest], f"Merged sets {', '.join(str(k + 1) for k in chosen)}")


def split_set(traj: Trajectory, detected: SymmetryInfo) -> None:
    """Callback of "Split": break the chosen set (1-based number) into single atoms."""
    sym = get_symmetry(traj) or detected
    k = st.session_state.get(state.SYM_SPLIT_SET)
    if k is None:
        st.session_state[state.SYMMETRY_ERROR] = "No set with more than one atom to split."
        return
    k = int(k) - 1
    sets = [s for j, s in enumerate(sym.pe_sets) if j != k] + [[int(i)] for i in sym.pe_sets[k]]
    _accept(traj, detected, sets, f"Split set {k + 1} into single atoms")


def reset_to_detected(traj: Trajectory, detected: SymmetryInfo, source: tuple) -> None:
    """Callback of "Reset": the detected sets become active again."""
    set_active(traj, detected, source)
    st.session_state[state.SYM_OVERRIDE_TEXT] = format_sets(detected.pe_sets)
    st.session_state[state.SYMMETRY_ERROR] = None
    st.session_state[state.SYMMETRY_NOTICE] = "Back to the detected sets."


# -- settings that survive a visit to another page ------------------------------------------------


def restore_settings(store_key: str, keys, fingerprint: str | None = None) -> None:
    """Put back widget values saved by :func:`save_settings` (Streamlit drops widget state off-page).

    With ``fingerprint``, settings saved for another data set are dropped
    instead (and so are the widgets' current values).
    """
    saved = st.session_state.get(store_key)
    if not isinstance(saved, dict):
        return
    if fingerprint is not None and saved.get("__for__") != fingerprint:
        for k in keys:
            st.session_state.pop(k, None)
        st.session_state.pop(store_key, None)
        return
    for k in keys:
        if k not in st.session_state and k in saved:
            st.session_state[k] = saved[k]


def save_settings(store_key: str, keys, fingerprint: str | None = None) -> None:
    """Remember the current values of widget ``keys`` under ``store_key``."""
    st.session_state[store_key] = {
        "__for__": fingerprint,
        **{k: st.session_state[k] for k in keys if k in st.session_state},
    }

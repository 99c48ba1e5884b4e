"""The Covariance page's sections (the paper's Fig. 1): each function draws one part (pages/covariance.py).

The matrices come from ``aff_app.gp.covariance`` (cached per data set and settings), the heatmaps
from ``aff_app.figures.covariance``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from aff_app.figures import covariance as fc
from aff_app.figures.symmetry import set_rows
from aff_app.gp import covariance as cov
from aff_app.io.trajectory import Trajectory
from aff_app.symmetry import SymmetryInfo
from aff_app.ui import model_widgets as mw
from aff_app.ui import state
from aff_app.ui import symmetry_widgets as sw

SETTINGS = (state.COV_FRAMES, state.COV_GAMMA, state.COV_PS, state.COV_CORRELATION, state.COV_SET, state.COV_SET_FRAMES)
MAX_FRAMES = 3
MAX_SET_FRAMES = 5



@dataclass(frozen=True)
class View:
    """What the heatmaps show: the frames text, γ, the permutations (None: plain kernel), correlation or not."""

    frames_text: str
    gamma: float
    perms: np.ndarray | None
    as_corr: bool
    kernel_name: str
    value_title: str
    zmax: float | None

    def show(self, matrix):
        """``matrix`` as shown: its correlation when that toggle is on, else itself."""
        return cov.to_correlation(matrix) if self.as_corr else matrix


def settings(traj: Trajectory, sym: SymmetryInfo) -> View:
    """Frames, range γ, PS kernel and correlation toggles (restored per data set)."""
    fp, n_frames = traj.fingerprint, traj.n_frames
    sw.restore_settings(state.COV_SETTINGS, SETTINGS, fingerprint=fp)
    st.session_state.setdefault(state.COV_FRAMES, ", ".join(map(str, cov.even_frames(n_frames, MAX_FRAMES))))
    st.session_state.setdefault(state.COV_GAMMA, sw.default_gamma_cached(fp, _R=traj.R))
    st.session_state.setdefault(state.COV_PS, sym.n_perms > 1)
    st.session_state.setdefault(state.COV_CORRELATION, True)
    st.session_state.setdefault(state.COV_SET_FRAMES, ", ".join(map(str, cov.even_frames(n_frames, MAX_SET_FRAMES))))

    c1, c2, c3, c4 = st.columns([1.6, 1, 1.2, 1.2], vertical_alignment="bottom")
    frames_text = c1.text_input(
        f"Configurations (1–{MAX_FRAMES} frame numbers, 0…{n_frames - 1})", key=state.COV_FRAMES,
        help="Comma- or space-separated. Two or three frames give the block matrix between them (3N·k × 3N·k).",
    )
    gamma = c2.number_input(
        "Range γ (1/Å)", min_value=1e-4, max_value=1e3, step=0.01, format="%.4g", key=state.COV_GAMMA,
        help=f"Default {sw.default_gamma_cached(fp, _R=traj.R):.3g}: the median distance between the descriptors "
             "(inverse pairwise distances, 1/Å) of two frames. Larger γ couples configurations more.",
    )
    ps = c3.toggle(
        f"PS kernel (S = {sym.n_perms})", key=state.COV_PS,
        disabled=sym.n_perms == 1,
        help=f"Average the kernel over the {sym.n_perms} permutations of the active symmetry (Symmetry page). "
             + ("This data set has none besides the identity." if sym.n_perms == 1 else ""),
    )
    as_corr = c4.toggle("Show correlation", key=state.COV_CORRELATION,
                        help="On: covariance / √(variance × variance), unitless in −1…1. "
                             "Off: the raw kernel covariance in kernel units (1/Å², prior variance σ² = 1).")
    perms = sym.perms if (ps and sym.n_perms > 1) else None
    kernel_name = f"PS kernel, S = {sym.n_perms}" if perms is not None else "plain kernel"
    if as_corr:
        value_title, zmax = "correlation (unitless)", 1.0
    else:
        value_title, zmax = "covariance (kernel units, 1/Å²; σ² = 1)", None
    st.caption(
        ("Shown as **correlation** (unitless, −1…1). " if as_corr else
         "Shown as **raw kernel covariance** in kernel units (1/Å²): multiplied by a fitted σ² it would be in "
         "(kcal/mol/Å)². ")
        + "Red: positive, blue: negative, white: zero; the colour scale is symmetric about zero."
    )
    return View(frames_text=frames_text, gamma=float(gamma), perms=perms, as_corr=as_corr, kernel_name=kernel_name,
                value_title=value_title, zmax=zmax)


def _reordered(C: np.ndarray, order: list[int], n_atoms: int, n_frames: int) -> np.ndarray:
    """``C`` with its atoms listed set by set in every frame block (the AFF blocks become contiguous)."""
    ix = cov.component_index(n_atoms, n_frames, order)
    return C[np.ix_(ix, ix)]


def full_and_empirical(traj: Trajectory, sym: SymmetryInfo, view: View) -> list[int] | None:
    """The kernel's covariance between 1–3 frames beside the data's own force correlation, AFF's blocks outlined.

    Returns the frames shown (None when the frame list is invalid).
    """
    fp, n_frames, n_atoms = traj.fingerprint, traj.n_frames, traj.n_atoms
    frames_text, gamma, perms, as_corr = view.frames_text, view.gamma, view.perms, view.as_corr
    kernel_name, value_title, zmax, _show = view.kernel_name, view.value_title, view.zmax, view.show
    try:
        frames = cov.parse_frame_list(frames_text, n_frames, max_count=MAX_FRAMES)
    except cov.CovarianceError as exc:
        st.error(f"Configurations: {exc}")
        frames = None
    order = cov.set_order(sym.pe_sets)
    sizes = [len(s) for s in sym.pe_sets]

    left, right = st.columns([1.25, 1], gap="medium")
    with left:
        if frames is not None:
            C = sw.kernel_covariance_cached(fp, tuple(frames), float(gamma), perms, _R=traj.R)
            k = len(frames)
            what = "one configuration" if k == 1 else f"{k} configurations"
            fig = fc.covariance_heatmap(
                _reordered(_show(C), order, n_atoms, k), traj.z, atoms=order, frames=frames, set_sizes=sizes,
                title=f"Kernel force {'correlation' if as_corr else 'covariance'}, {what}\n"
                      f"{kernel_name}, γ = {gamma:.3g} 1/Å · {3 * n_atoms * k} × {3 * n_atoms * k}",
                colorbar_title=value_title, zmax=zmax, height=620,
            )
            st.plotly_chart(fig, key=state.COV_FULL_CHART)
            st.caption(
                f"{3 * n_atoms * k} × {3 * n_atoms * k}: every force component of frame{'s' if k > 1 else ''} "
                f"{', '.join(map(str, frames))} against every other, atoms listed PE set by PE set. Outlined: the "
                "blocks AFF keeps (one set against itself, in any pair of frames); everything outside them is "
                "coupling AFF leaves out."
            )
    with right:
        if traj.F is None:
            st.info("This data set has no forces: no empirical correlation to compare with.")
        elif n_frames < 3:
            st.info("The empirical correlation needs at least 3 frames.")
        else:
            R_emp = sw.empirical_correlation_cached(fp, _F=traj.F)
            fig = fc.covariance_heatmap(
                _reordered(R_emp, order, n_atoms, 1), traj.z, atoms=order, set_sizes=sizes,
                title=f"Empirical force correlation\nnp.corrcoef over all {n_frames:,} frames · {3 * n_atoms} × {3 * n_atoms}",
                colorbar_title="correlation (unitless)", zmax=1.0, height=540,
            )
            st.plotly_chart(fig, key=state.COV_EMPIRICAL_CHART)
            st.caption(
                f"np.corrcoef of the {3 * n_atoms} force components (kcal/mol/Å) across the trajectory: what the "
                "data itself says about how forces on different atoms move together. Same colour scale and outlines."
            )
    return frames


def _share_row(source: str, share: cov.BlockShare) -> dict:
    return {
        "correlation of": source,
        "kept by AFF": f"{100 * share.kept:.0f}%",
        "AFF blocks' share of entries": f"{100 * share.entries:.0f}%",
        "mean |corr| within sets": f"{share.mean_within:.2f}",
        "mean |corr| between sets": f"{share.mean_between:.2f}",
    }


def what_aff_keeps(traj: Trajectory, sym: SymmetryInfo, view: View, frames: list[int] | None) -> None:
    """How much of the coupling lies inside AFF's blocks: for the kernel shown, the trained model's γ, and the data."""
    if frames is None:
        return
    fp, n_atoms, k = traj.fingerprint, traj.n_atoms, len(frames)
    st.subheader("What AFF keeps")
    rows, shares = [], {}
    C = sw.kernel_covariance_cached(fp, tuple(frames), float(view.gamma), view.perms, _R=traj.R)
    shares["kernel"] = cov.block_share(cov.to_correlation(C), sym.pe_sets, n_atoms, k)
    rows.append(_share_row(f"kernel shown ({view.kernel_name}, γ = {view.gamma:.3g} 1/Å)", shares["kernel"]))
    model = next((e for e in reversed(mw.get_registry().for_data(fp)) if e.mode == "aff"), None)
    if model is not None:
        f = model.force
        Cm = sw.kernel_covariance_cached(fp, tuple(frames), float(f.gamma), f.perms if f.perms.shape[0] > 1 else None,
                                         _R=traj.R)
        shares["model"] = cov.block_share(cov.to_correlation(Cm), f.pe_sets, n_atoms, k)
        rows.append(_share_row(f"kernel of {model.name} (γ = {f.gamma:.3g} 1/Å, its sets)", shares["model"]))
    if traj.F is not None and traj.n_frames >= 3:
        shares["data"] = cov.block_share(sw.empirical_correlation_cached(fp, _F=traj.F), sym.pe_sets, n_atoms, 1)
        rows.append(_share_row(f"data (all {traj.n_frames:,} frames)", shares["data"]))
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption("Share of the squared off-diagonal correlation, Σ C_ab² over a ≠ b, inside the outlined blocks; the "
               "share of entries is what an evenly spread correlation would give. Diagonal entries (1) left out.")
    ref = shares.get("model", shares["kernel"])
    where = "the trained model's kernel" if "model" in shares else "the kernel shown"
    data = shares.get("data")
    data_text = (f" The data's own force correlation has {100 * data.kept:.0f}% inside them." if data else "")
    if ref.verdict == "weak":
        st.warning(
            f"**The decoupling is weak for {traj.formula}.** AFF's blocks hold {100 * ref.kept:.0f}% of the coupling "
            f"in {where} ({100 * ref.entries:.0f}% of the entries): it drops {100 * ref.dropped:.0f}%.{data_text} "
            "AFF then trades accuracy per frame for speed; the sGDML mode keeps the coupling (compare them on the "
            "Compare page) and AFF makes up with more frames."
        )
    else:
        st.success(
            f"The decoupling is {ref.verdict} for {traj.formula}: AFF's blocks hold {100 * ref.kept:.0f}% of the "
            f"coupling in {where} ({100 * ref.entries:.0f}% of the entries).{data_text}"
        )


def one_set(traj: Trajectory, sym: SymmetryInfo, view: View) -> None:
    """One PE set's sub-covariance R_i across up to five frames."""
    fp, n_frames = traj.fingerprint, traj.n_frames
    gamma, perms, as_corr = view.gamma, view.perms, view.as_corr
    kernel_name, value_title, zmax, _show = view.kernel_name, view.value_title, view.zmax, view.show
    st.subheader("One PE set across configurations")
    st.caption(
        "The sub-covariance R_i that one AFF Gaussian process works with: the set's atoms only, across several "
        "configurations (the paper shows five). Strong coupling of the same atom across configurations is what the "
        "model learns from."
    )
    set_numbers = [k + 1 for k in range(sym.n_sets)]
    largest = int(sym.set_sizes.argmax()) + 1
    if st.session_state.get(state.COV_SET) not in set_numbers:
        st.session_state[state.COV_SET] = largest
    rows = set_rows(sym.pe_sets, traj.z)
    plot_col, ctrl_col = st.columns([1.25, 1], gap="medium")
    with ctrl_col:
        set_no = st.selectbox(
            "PE set", set_numbers, key=state.COV_SET,
            format_func=lambda k: f"set {k} · {rows[k - 1]['size l_i']} × {rows[k - 1]['element(s)']} ({rows[k - 1]['atoms']})",
            help="The sets in use on the Symmetry page (detected, or your override).",
        )
        set_frames_text = st.text_input(
            f"Configurations (1–{MAX_SET_FRAMES} frame numbers)", key=state.COV_SET_FRAMES,
            help="Comma- or space-separated frame numbers.",
        )
        st.caption(
            f"Range γ, kernel and correlation/covariance as above. Sets in use: {sw.describe(sym)} "
            f"({sym.n_sets} sets, {sym.n_perms} permutations)."
        )
    try:
        set_frames = cov.parse_frame_list(set_frames_text, n_frames, max_count=MAX_SET_FRAMES)
    except cov.CovarianceError as exc:
        ctrl_col.error(f"Configurations for the PE set: {exc}")
        set_frames = None
    if set_frames is not None:
        atoms = tuple(int(i) for i in sym.pe_sets[set_no - 1])
        Cs = sw.set_covariance_cached(fp, tuple(set_frames), float(gamma), atoms, perms, _R=traj.R)
        side = 3 * len(atoms) * len(set_frames)
        fig = fc.covariance_heatmap(
            _show(Cs), traj.z, atoms=atoms, frames=set_frames,
            title=f"PE set {set_no} ({rows[set_no - 1]['size l_i']} × {rows[set_no - 1]['element(s)']}) across "
                  f"{len(set_frames)} configuration{'s' if len(set_frames) > 1 else ''}\n"
                  f"{'correlation' if as_corr else 'covariance'}, {kernel_name}, γ = {gamma:.3g} 1/Å · {side} × {side}",
            colorbar_title=value_title, zmax=zmax, height=620 if side > 30 else 480,
        )
        plot_col.plotly_chart(fig, key=state.COV_SET_CHART)

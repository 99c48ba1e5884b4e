"""The Symmetry page's sections: each function draws one part of the page (pages/symmetry.py).

The active sets are ``st.session_state[state.SYMMETRY]`` (a SymmetryInfo), which the Covariance and
Train pages use; detection is ``aff_app.symmetry``, cached per data set and settings.
"""

from __future__ import annotations

import streamlit as st

from aff_app.figures import symmetry as fs
from aff_app.gp import covariance as cov
from aff_app.io.trajectory import Trajectory
from aff_app.symmetry import SymmetryError, SymmetryInfo, cycle_notation
from aff_app.ui import data_widgets as dw
from aff_app.ui import state
from aff_app.ui import symmetry_widgets as sw

SETTINGS = (state.SYM_METHOD, state.SYM_N_SAMPLES, state.SYM_SEED, state.SYM_SHOW_LABELS, state.SYM_COST_M)
METHOD_LABELS = {
    "data": "from the data (permutations realised between frames)",
    "graph": "bond-graph automorphisms (first frame; for comparison)",
}
MAX_LISTED_PERMS = 200



def detection(traj: Trajectory) -> tuple[SymmetryInfo, SymmetryInfo, tuple]:
    """The detection settings and the detected group: (detected, active, source of the active sets)."""
    fp = traj.fingerprint
    sw.restore_settings(state.SYM_SETTINGS, SETTINGS)
    st.session_state.setdefault(state.SYM_METHOD, sw.DEFAULT_METHOD)
    st.session_state.setdefault(state.SYM_N_SAMPLES, sw.DEFAULT_N_SAMPLES)
    st.session_state.setdefault(state.SYM_SEED, sw.DEFAULT_SEED)
    st.session_state.setdefault(state.SYM_SHOW_LABELS, True)
    st.session_state.setdefault(state.SYM_COST_M, 200)

    c_method, c_samples, c_seed = st.columns([2.2, 1, 1], vertical_alignment="bottom")
    method = c_method.radio(
        "Find the permutations", list(METHOD_LABELS), format_func=METHOD_LABELS.get, key=state.SYM_METHOD,
        help="'data' is what AFF uses: only permutations the data realises count. The bond graph also counts "
             "exchanges that a static geometry allows but the dynamics never performs.",
    )
    n_samples = c_samples.number_input(
        "Frames searched", min_value=2, max_value=5000, step=50, key=state.SYM_N_SAMPLES,
        disabled=method != "data", help="Random frames whose pairwise matches are searched (all, when fewer).",
    )
    seed = c_seed.number_input("Seed", min_value=0, step=1, key=state.SYM_SEED, disabled=method != "data",
                               help="Random draw of the searched frames.")

    source = (fp, method, int(n_samples), int(seed)) if method == "data" else (fp, method, 0, 0)
    try:
        detected = sw.detect_cached(*source, _R=traj.R, _z=traj.z)
    except SymmetryError as exc:
        st.error(f"Detection failed: {exc}. Using no symmetry (every atom its own PE set) until it succeeds.")
        detected = sw.trivial_symmetry(traj.z)

    # a new data set or new detection settings start again from the detected sets
    if sw.get_symmetry(traj) is None or st.session_state.get(state.SYMMETRY_SOURCE) != source:
        sw.set_active(traj, detected, source)
        st.session_state[state.SYM_OVERRIDE_TEXT] = sw.format_sets(detected.pe_sets)
        st.session_state[state.SYMMETRY_ERROR] = None
        st.session_state[state.SYMMETRY_NOTICE] = None
    st.session_state.setdefault(state.SYM_OVERRIDE_TEXT, sw.format_sets(detected.pe_sets))
    active = sw.get_symmetry(traj)
    return detected, active, source


def summary(active: SymmetryInfo, detected: SymmetryInfo) -> None:
    """How many permutations and sets, which sets, and the permutations in cycle notation."""
    sizes = active.set_sizes
    m = st.columns(4)
    m[0].metric("Permutations S", active.n_perms, help="Size of the group the PS kernel averages over (identity included).")
    m[1].metric("PE sets", active.n_sets)
    m[2].metric("Sets with more than one atom", int((sizes > 1).sum()))
    m[3].metric("Largest set l_max", int(sizes.max()))
    st.markdown(f"**Sets in use:** {sw.describe(active)}."
                + (f" Detected: {detected.n_perms} permutations, {detected.n_sets} PE sets." if active.method == "user" else ""))

    with st.expander(f"The {active.n_perms} permutation{'s' if active.n_perms != 1 else ''} in cycle notation"):
        st.caption("(0 1 2) means atom 0 → 1, 1 → 2, 2 → 0 (0-based indices); () is the identity.")
        lines = [f"{k + 1:>4}. {cycle_notation(p)}" for k, p in enumerate(active.perms[:MAX_LISTED_PERMS])]
        if active.n_perms > MAX_LISTED_PERMS:
            lines.append(f"… and {active.n_perms - MAX_LISTED_PERMS} more")
        st.code("\n".join(lines), language=None)


def sets_on_molecule(traj: Trajectory, active: SymmetryInfo) -> list[dict]:
    """The PE sets as colours on the molecule, with a legend and a table; returns the table's rows."""
    atom_colors, _ = fs.set_colors(active.pe_sets, traj.n_atoms)
    left, right = st.columns([1.25, 1], gap="medium")
    with left:
        labels = st.toggle("Atom labels (element + 0-based index)", key=state.SYM_SHOW_LABELS)
        dw.show_molecule(traj.z, traj.R[0], colors=atom_colors, labels=labels,
                         caption="frame 0 · colour = PE set (key on the right)")
    with right:
        st.html(fs.legend_html(active.pe_sets, traj.z))
        rows = fs.set_rows(active.pe_sets, traj.z)
        st.dataframe(
            [{"set": r["set"], "element(s)": r["element(s)"], "atoms (0-based)": r["atoms"], "size l_i": r["size l_i"]}
             for r in rows],
            hide_index=True, width="stretch", height=min(38 + 35 * len(rows), 330),
            column_config={
                "set": st.column_config.NumberColumn("set", width="small"),
                "size l_i": st.column_config.NumberColumn("size l_i", width="small"),
            },
        )
    return rows


def override(traj: Trajectory, active: SymmetryInfo, detected: SymmetryInfo, source: tuple, rows: list[dict]) -> None:
    """Override the sets: as text, by merging, or by splitting; back to the detected ones."""
    st.subheader("Override the sets")
    if st.session_state.get(state.SYMMETRY_ERROR):
        st.error(st.session_state[state.SYMMETRY_ERROR])
    elif st.session_state.get(state.SYMMETRY_NOTICE):
        st.success(st.session_state[state.SYMMETRY_NOTICE])
    o_text, o_tools = st.columns([1.4, 1], gap="medium")
    with o_text:
        st.text_area(
            "PE sets as text", key=state.SYM_OVERRIDE_TEXT, height=90,
            help="0-based atom indices; sets separated by ';' or new lines, atoms by spaces or commas, ranges "
                 "like 6-11. Atoms not listed become single-atom sets. A set holds atoms of one element.",
        )
        b1, b2 = st.columns(2)
        b1.button("Apply", key=state.SYM_APPLY, type="primary", on_click=sw.apply_text, args=(traj, detected),
                  width="stretch")
        b2.button("Reset to detected", key=state.SYM_RESET, on_click=sw.reset_to_detected,
                  args=(traj, detected, source), width="stretch", disabled=active.method != "user")
    with o_tools:
        numbers = [k + 1 for k in range(active.n_sets)]
        chosen = [k for k in st.session_state.get(state.SYM_MERGE_SETS) or [] if k in numbers]
        st.session_state[state.SYM_MERGE_SETS] = chosen  # set numbers change after a merge or split
        st.multiselect("Merge sets (same element)", numbers, key=state.SYM_MERGE_SETS,
                       format_func=lambda k: f"set {k} ({rows[k - 1]['atoms']})")
        multi = [k + 1 for k, s in enumerate(active.pe_sets) if s.size > 1]
        st.button("Merge", key=state.SYM_MERGE, on_click=sw.merge_sets, args=(traj, detected))
        if st.session_state.get(state.SYM_SPLIT_SET) not in multi:
            st.session_state.pop(state.SYM_SPLIT_SET, None)
        st.selectbox("Split a set into single atoms", multi, key=state.SYM_SPLIT_SET,
                     format_func=lambda k: f"set {k} ({rows[k - 1]['atoms']})", disabled=not multi,
                     placeholder="no set with more than one atom")
        st.button("Split", key=state.SYM_SPLIT, on_click=sw.split_set, args=(traj, detected), disabled=not multi)
    st.caption("The PS kernel keeps only the detected permutations that map every set onto itself.")


def cost(traj: Trajectory, active: SymmetryInfo) -> None:
    """What the decomposition saves against one kernel over all atoms, at a chosen M."""
    sizes = active.set_sizes
    st.subheader("What the decomposition saves")
    c_m, c_txt = st.columns([1, 3], vertical_alignment="bottom")
    n_train = c_m.number_input("Training configurations M", min_value=1, max_value=100_000, step=100,
                               key=state.SYM_COST_M)
    cost = cov.compare_cost(int(n_train), [int(x) for x in sizes])
    c_txt.caption(
        f"One fit factors one 3·M·l_i square kernel per PE set (AFF) instead of one 3·M·N kernel over all "
        f"{traj.n_atoms} atoms (GDML/sGDML). Cholesky: Σ (3 M l_i)³/3 against (3 M N)³/3 flops; kernel memory: "
        "Σ 8 (3 M l_i)² against 8 (3 M N)² bytes (float64; 1 GB = 10⁹ bytes)."
    )
    k = st.columns(4)
    k[0].metric("AFF Cholesky work", cov.format_flops(cost.aff_flops))
    k[1].metric("GDML/sGDML Cholesky work", cov.format_flops(cost.full_flops))
    k[2].metric("AFF kernel memory", cov.format_bytes(cost.aff_bytes))
    k[3].metric("GDML/sGDML kernel memory", cov.format_bytes(cost.full_bytes))
    st.markdown(
        f"**With these sets AFF needs {cost.flops_ratio:,.1f}× fewer flops and {cost.bytes_ratio:,.1f}× less kernel "
        f"memory than one kernel over all atoms**, at M = {cost.n_train:,}."
    )

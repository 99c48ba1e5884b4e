"""Permutation symmetry and PE sets (aff_app.symmetry).

Reference counts: method.md, "Permutation symmetry and permutationally
equivalent (PE) sets" (the sgdml package's search on 200 random rMD17 frames).
"""

from __future__ import annotations

import json
from pathlib import Path

import os

import numpy as np
import pytest
from ase.data import chemical_symbols
from scipy.spatial.transform import Rotation

from aff_app.symmetry import (
    SymmetryError,
    SymmetryInfo,
    bond_graph,
    close_group,
    cycle_notation,
    detect_symmetry,
    find_permutations,
    graph_automorphisms,
    parse_pe_sets,
    pe_sets_from_permutations,
    restrict_group,
    user_symmetry,
    validate_pe_sets,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "md17"

# method.md's table: permutations, PE sets, multi-atom sets as (size, element);
# "parent" lists the sets whose hydrogens hang on one carbon (CH2 / CH3 groups).
TABLE = {
    "benzene": (12, 2, [(6, "C"), (6, "H")], []),
    "uracil": (1, 12, [], []),
    "aspirin": (6, 19, [(3, "H")], [3]),
    "naphthalene": (4, 5, [(2, "C"), (4, "C"), (4, "C"), (4, "H"), (4, "H")], []),
    "toluene": (12, 9, [(2, "C"), (2, "C"), (2, "H"), (2, "H"), (3, "H")], [3]),
    "ethanol": (6, 6, [(2, "H"), (3, "H")], [2, 3]),
    "malonaldehyde": (4, 5, [(2, "C"), (2, "H"), (2, "H"), (2, "O")], []),
    "salicylic": (1, 16, [], []),
}

# the reference data must be there: the shared_data fixture fails (never skips) when it is not
pytestmark = pytest.mark.usefixtures("shared_data")


def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA / f"{name}.npz") as d:  # no pickles: plain arrays only
        return d["R"], d["z"]


@pytest.fixture(scope="module")
def detected():
    """Detection per molecule on 200 random frames (seed 0), computed once."""
    cache: dict[str, tuple[np.ndarray, np.ndarray, SymmetryInfo]] = {}

    def get(name: str):
        if name not in cache:
            R, z = _load(name)
            cache[name] = (R, z, detect_symmetry(R, z, n_samples=200, seed=0))
        return cache[name]

    return get


def _as_set(perms: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in p) for p in perms}


def _assert_group(G: np.ndarray) -> None:
    S, n = G.shape
    assert np.array_equal(G[0], np.arange(n)), "identity first"
    assert np.unique(G, axis=0).shape[0] == S, "no repeated rows"
    assert np.array_equal(G, np.unique(G, axis=0)), "rows sorted"
    elements = _as_set(G)
    products = G[:, G].reshape(-1, n)  # products[p, q] = G[p][G[q]]
    assert _as_set(products) == elements, "closed under composition"
    assert _as_set(np.argsort(G, axis=1)) == elements, "closed under inverse"


# ---------------------------------------------------------------------------
# method.md's table
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TABLE))
def test_reference_table(detected, name):
    R, z, info = detected(name)
    n_perms, n_sets, multi, parents = TABLE[name]
    assert info.method == "data" and info.n_samples == 200 and info.seed == 0
    assert info.n_perms == n_perms
    assert info.n_sets == n_sets
    got = sorted((int(s.size), chemical_symbols[z[s[0]]]) for s in info.pe_sets if s.size > 1)
    assert got == sorted(multi)
    for s in info.pe_sets:
        assert np.unique(z[s]).size == 1, "a PE set holds one element"
    # the CH2/CH3 hydrogens of a set sit on one carbon (nearest heavy atom)
    heavy = np.flatnonzero(z > 1)
    r0 = R[0]
    for size in parents:
        sets = [s for s in info.pe_sets if s.size == size and z[s[0]] == 1]
        assert sets
        for s in sets:
            d = np.linalg.norm(r0[s][:, None] - r0[heavy][None], axis=-1)
            assert np.unique(heavy[np.argmin(d, axis=1)]).size == 1


@pytest.mark.parametrize("name", list(TABLE))
def test_detected_group_is_a_group_of_bond_preserving_permutations(detected, name):
    R, z, info = detected(name)
    G = info.perms
    _assert_group(G)
    assert np.all(z[G] == z), "same element onto same element"
    # every realised permutation keeps the bonds: it is an automorphism of the bond graph
    assert _as_set(G) <= _as_set(graph_automorphisms(R[0], z))


# ---------------------------------------------------------------------------
# invariances
# ---------------------------------------------------------------------------
def test_rigid_motions_and_mirror_images_do_not_change_the_group(detected):
    R, z, info = detected("toluene")
    rng = np.random.default_rng(7)
    M = R.shape[0]
    rot = Rotation.random(M, random_state=11).as_matrix()
    mirror = np.where(rng.random(M) < 0.5, -1.0, 1.0)[:, None, None]  # some frames reflected
    moved = mirror * np.einsum("mij,mnj->mni", rot, R) + rng.normal(scale=5.0, size=(M, 1, 3))
    G = find_permutations(moved, z, n_samples=200, seed=0)
    assert np.array_equal(G, info.perms)


@pytest.mark.parametrize("name", ["ethanol", "naphthalene"])
def test_relabelling_the_atoms_conjugates_the_group(detected, name):
    R, z, info = detected(name)
    n = z.size
    sigma = np.random.default_rng(3).permutation(n)  # new atom i is old atom sigma[i]
    inv = np.argsort(sigma)
    G2 = find_permutations(R[:, sigma], z[sigma], n_samples=200, seed=0)
    # R_a[p] ~ R_b  <=>  R'_a[q] ~ R'_b with q = sigma^-1[p[sigma]]
    expected = inv[info.perms[:, sigma]]
    assert _as_set(G2) == _as_set(expected)
    sets2 = [s.tolist() for s in pe_sets_from_permutations(G2)]
    mapped = sorted((np.sort(inv[s]).tolist() for s in info.pe_sets), key=lambda s: s[0])
    assert sets2 == mapped


def test_rigid_random_cluster_has_no_symmetry():
    # five carbons in an irregular rigid arrangement with small thermal noise: only the identity
    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0, 0], [1.5, 0, 0], [0.3, 1.7, 0], [0.2, 0.4, 1.9], [2.1, 1.2, 0.8]])
    R = base + rng.normal(scale=0.02, size=(300, 5, 3))
    G = find_permutations(R, np.full(5, 6), n_samples=100, seed=1)
    assert G.shape == (1, 5)


def test_a_realised_exchange_is_found_and_an_unrealised_mirror_is_not():
    # X-Y-H2 rotor: a rigid "heavy" frame (C, N, O) with two H on the C that swap places
    # through a rotation that the trajectory samples (angles spread over a full turn)
    rng = np.random.default_rng(1)
    M = 400
    frames = []
    for phi in rng.uniform(0, 2 * np.pi, M):
        heavy = np.array([[0.0, 0, 0], [1.4, 0, 0], [2.0, 1.1, 0.0]])  # C, N, O (planar, no symmetry)
        h = [[-0.5, np.cos(phi + k * np.pi) * 0.9, np.sin(phi + k * np.pi) * 0.9] for k in (0, 1)]
        frames.append(np.vstack([heavy, h]))
    R = np.array(frames) + rng.normal(scale=0.01, size=(M, 5, 3))
    z = np.array([6, 7, 8, 1, 1])
    G = find_permutations(R, z, n_samples=200, seed=0)
    assert _as_set(G) == {(0, 1, 2, 3, 4), (0, 1, 2, 4, 3)}
    # a single static frame realises nothing, though its bond graph has the H-H exchange
    assert find_permutations(R[:1], z).shape == (1, 5)
    assert graph_automorphisms(R[0], z).shape[0] == 2


# ---------------------------------------------------------------------------
# closure and orbits
# ---------------------------------------------------------------------------
def test_close_group_builds_dihedral_and_symmetric_groups():
    ring = np.roll(np.arange(6), -1)  # 6-cycle
    flip = (-np.arange(6)) % 6  # reflection of the hexagon
    D6 = close_group(np.array([ring, flip]))
    assert D6.shape == (12, 6)
    _assert_group(D6)
    S4 = close_group(np.array([[1, 2, 3, 0], [1, 0, 2, 3]]))
    assert S4.shape == (24, 4)
    _assert_group(S4)
    assert close_group(np.arange(5)).shape == (1, 5)


def test_close_group_refuses_an_exploding_group_with_the_numbers():
    gens = np.array([np.roll(np.arange(7), -1), [1, 0, 2, 3, 4, 5, 6]])  # generate S7 (5040)
    with pytest.raises(SymmetryError, match=r"max_order=100 .*reached 101"):
        close_group(gens, max_order=100)


def test_close_group_rejects_rows_that_are_not_permutations():
    with pytest.raises(SymmetryError, match=r"first bad row 1: \[0, 0, 2\]"):
        close_group(np.array([[0, 1, 2], [0, 0, 2]]))


def test_orbits_from_generators_equal_orbits_from_the_group(detected):
    _, _, info = detected("toluene")
    gens = info.perms[[1, -1]]
    closed = close_group(gens)
    a = [s.tolist() for s in pe_sets_from_permutations(gens)]
    b = [s.tolist() for s in pe_sets_from_permutations(closed)]
    assert a == b
    assert pe_sets_from_permutations(np.array([[1, 0, 2, 4, 3]]))[0].tolist() == [0, 1]
    assert [s.tolist() for s in pe_sets_from_permutations(np.array([[2, 0, 1, 3]]))] == [[0, 1, 2], [3]]


def test_two_opt_polish_ends_in_a_local_optimum_of_the_matching_objective():
    # the vectorised exchange gains against a plain loop over every exchange of two atoms
    from aff_app.symmetry.detect import _two_opt

    rng = np.random.default_rng(0)
    z = np.array([1, 1, 1, 1, 6, 6, 6, 8])
    n = z.size
    X = rng.normal(size=(6, n, 3))
    d = np.linalg.norm(X[:, :, None] - X[:, None], axis=-1)
    A = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    a, b = np.array([0, 2, 4]), np.array([1, 3, 5])
    P = _two_opt(A, a, b, np.tile(np.arange(n), (3, 1)), z[:, None] == z[None, :])
    for e in range(3):
        p = P[e]
        assert np.all(z[p] == z)
        cost = np.linalg.norm(A[a[e]][np.ix_(p, p)] - A[b[e]])
        assert cost <= np.linalg.norm(A[a[e]] - A[b[e]])
        for r in range(n):
            for s in range(r + 1, n):
                if z[r] == z[s]:
                    q = p.copy()
                    q[[r, s]] = q[[s, r]]
                    assert np.linalg.norm(A[a[e]][np.ix_(q, q)] - A[b[e]]) >= cost - 1e-12


def test_cycle_notation():
    assert cycle_notation([1, 2, 0, 3, 5, 4]) == "(0 1 2)(4 5)"
    assert cycle_notation(np.arange(3)) == "()"


# ---------------------------------------------------------------------------
# bond graph view
# ---------------------------------------------------------------------------
def test_benzene_bond_graph_has_the_12_dihedral_permutations(detected):
    R, z, info = detected("benzene")
    adj = bond_graph(R[0], z)
    assert adj.sum() == 2 * 12  # 6 C-C + 6 C-H bonds
    G = graph_automorphisms(R[0], z)
    assert G.shape == (12, 12)  # D6: D6h's 24 operations give 12 distinct permutations
    _assert_group(G)
    assert _as_set(G) == _as_set(info.perms)


def test_graph_view_finds_more_than_the_data_for_ethanol(detected):
    R, z, info = detected("ethanol")
    G = graph_automorphisms(R[0], z)
    assert G.shape[0] == 12  # S2 (CH2) x S3 (CH3)
    assert _as_set(info.perms) < _as_set(G)
    graph_info = detect_symmetry(R, z, method="graph")
    assert graph_info.method == "graph" and graph_info.n_samples is None
    assert [s.size for s in graph_info.pe_sets if s.size > 1] == [2, 3]


@pytest.mark.parametrize("name", ["aspirin", "naphthalene", "toluene", "uracil"])
def test_graph_automorphisms_agree_with_networkx(name):
    if os.environ.get("CI") == "true":  # installed with the peer by scripts/setup.sh --dev
        import networkx as nx
    else:
        nx = pytest.importorskip("networkx")
    from networkx.algorithms.isomorphism import GraphMatcher

    R, z = _load(name)
    adj = bond_graph(R[0], z)
    g = nx.Graph()
    g.add_nodes_from((i, {"z": int(z[i])}) for i in range(z.size))
    g.add_edges_from(map(tuple, np.argwhere(np.triu(adj))))
    matcher = GraphMatcher(g, g, node_match=lambda a, b: a["z"] == b["z"])
    ref = {tuple(m[i] for i in range(z.size)) for m in matcher.isomorphisms_iter()}
    assert _as_set(graph_automorphisms(R[0], z)) == ref


# ---------------------------------------------------------------------------
# user overrides
# ---------------------------------------------------------------------------
def test_parse_pe_sets_reads_lists_ranges_and_fills_singletons():
    sets = parse_pe_sets("0,1,2; 3 4 5; 6", 8)
    assert [s.tolist() for s in sets] == [[0, 1, 2], [3, 4, 5], [6], [7]]
    sets = parse_pe_sets("9-11\n 6 7 8 ;", 12)
    assert [s.tolist() for s in sets] == [[0], [1], [2], [3], [4], [5], [6, 7, 8], [9, 10, 11]]
    assert len(parse_pe_sets("", 3)) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,1; 1,2", r"more than once: \[1\]"),
        ("0, 1, 9; 12", r"out of range 0..7: \[9, 12\]"),
        ("0, one", r"cannot read 'one'"),
        ("5-3", r"backwards"),
        ("0,-1", r"cannot read '-1'"),
    ],
)
def test_parse_pe_sets_reports_bad_input(text, message):
    with pytest.raises(SymmetryError, match=message):
        parse_pe_sets(text, 8)


def test_validate_pe_sets_names_the_problem():
    z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])  # ethanol
    ok = validate_pe_sets([[4, 3], [0], [1], [2], [5, 6, 7], [8]], z)
    assert [s.tolist() for s in ok] == [[0], [1], [2], [3, 4], [5, 6, 7], [8]]
    with pytest.raises(SymmetryError, match=r"mixes elements \(1:Z=6, 2:Z=8\)"):
        validate_pe_sets([[0], [1, 2], [3, 4], [5, 6, 7], [8]], z)
    with pytest.raises(SymmetryError, match=r"in no PE set: \[8\]"):
        validate_pe_sets([[0], [1], [2], [3, 4], [5, 6, 7]], z)
    with pytest.raises(SymmetryError, match=r"more than one PE set \(or twice\): \[4\]"):
        validate_pe_sets([[0], [1], [2], [3, 4], [4, 5, 6, 7], [8]], z)
    with pytest.raises(SymmetryError, match=r"outside 0..8: \[9\]"):
        validate_pe_sets([[0, 1, 9]], z)


def test_user_sets_keep_the_subgroup_that_respects_them(detected):
    _, z, info = detected("ethanol")  # group of 6: CH3 rotations; CH3 transpositions swap the CH2 H too
    text = "5,6,7"  # CH2 hydrogens 3 and 4 left as singletons
    sets = parse_pe_sets(text, z.size)
    user = user_symmetry(sets, z, perms=info.perms, n_samples=info.n_samples, seed=info.seed)
    assert user.method == "user"
    assert user.n_perms == 3  # only the rotations of the methyl group fix atoms 3 and 4
    _assert_group(user.perms)
    lab = user.atom_to_set
    assert np.all(lab[user.perms] == lab)
    assert np.array_equal(restrict_group(info.perms, sets), user.perms)
    # the brute-force filter agrees
    keep = [p for p in info.perms if all(set(p[s].tolist()) == set(s.tolist()) for s in sets)]
    assert _as_set(np.array(keep)) == _as_set(user.perms)
    # merging sets no permutation mixes is allowed: the kernel keeps the whole group
    merged = user_symmetry([[0], [1], [2], [3, 4, 5, 6, 7], [8]], z, perms=info.perms)
    assert merged.n_perms == 6 and merged.n_sets == 5
    # no detected group: identity only
    assert user_symmetry(sets, z).n_perms == 1
    with pytest.raises(SymmetryError, match="mixes elements"):
        user_symmetry([[0, 2]] + [[i] for i in (1, 3, 4, 5, 6, 7, 8)], z)


# ---------------------------------------------------------------------------
# the result object and input checks
# ---------------------------------------------------------------------------
def test_symmetry_info_helpers_and_json_round_trip(detected):
    _, z, info = detected("naphthalene")
    assert info.set_sizes.tolist() == [4, 4, 2, 4, 4]
    assert info.set_sizes.sum() == z.size
    lab = info.atom_to_set
    for k, s in enumerate(info.pe_sets):
        assert np.all(lab[s] == k)
    d = json.loads(json.dumps(info.to_dict()))
    back = SymmetryInfo.from_dict(d)
    assert np.array_equal(back.perms, info.perms)
    assert [s.tolist() for s in back.pe_sets] == [s.tolist() for s in info.pe_sets]
    assert (back.method, back.n_samples, back.seed) == ("data", 200, 0)
    with pytest.raises(ValueError):
        info.perms[0, 0] = 1  # read-only


def test_symmetry_info_rejects_inconsistent_records():
    with pytest.raises(SymmetryError, match=r"move atoms between PE sets \(first: \(0 1\)\)"):
        SymmetryInfo(np.array([[0, 1, 2], [1, 0, 2]]), ([0], [1], [2]), "user")
    with pytest.raises(SymmetryError, match="identity"):
        SymmetryInfo(np.array([[1, 0, 2]]), ([0, 1], [2]), "user")
    with pytest.raises(SymmetryError, match="method"):
        SymmetryInfo(np.array([[0, 1]]), ([0], [1]), "guess")
    with pytest.raises(SymmetryError, match="lacks the key 'perms'"):
        SymmetryInfo.from_dict({"pe_sets": [[0]], "method": "user"})


def test_bad_inputs_raise_with_shapes():
    z = np.array([6, 1, 1])
    with pytest.raises(SymmetryError, match=r"shape \(M, 3, 3\).*got \(10, 4, 3\)"):
        find_permutations(np.zeros((10, 4, 3)), z)
    with pytest.raises(SymmetryError, match="n_samples must be an integer >= 2"):
        find_permutations(np.random.default_rng(0).normal(size=(10, 3, 3)), z, n_samples=1)
    R = np.random.default_rng(0).normal(size=(10, 3, 3))
    R[4, 2] = R[4, 1]
    with pytest.raises(SymmetryError, match=r"frame 4: atoms 1 and 2 coincide"):
        find_permutations(R, z)
    with pytest.raises(SymmetryError, match="method must be 'data' or 'graph'"):
        detect_symmetry(R[:2], z, method="user")


def test_progress_reports_fractions_up_to_one():
    R, z = _load("malonaldehyde")
    calls: list[tuple[float, str]] = []
    find_permutations(R, z, n_samples=60, progress=lambda f, msg: calls.append((f, msg)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert "4 permutations" in calls[-1][1]

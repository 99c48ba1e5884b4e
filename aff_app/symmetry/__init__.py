"""Permutation symmetry of molecular data and permutationally equivalent (PE) sets.

method.md, "Permutation symmetry and permutationally equivalent (PE) sets": a
permutation of atom indices (same element onto same element) is a symmetry of
the data when it maps configurations onto configurations. The permutations the
data realises are collected over sampled frames, closed under composition (a
group) and the orbits of the atoms under that group are the PE sets.

Convention (used by every function here and by the PS kernel)
--------------------------------------------------------------
A permutation is an integer array ``p`` of shape (N,) holding each of
``0..N-1`` once; "atom ``i`` maps to ``p[i]``". Applied to a configuration
``R`` of shape (N, 3) it gives the *relabelled* configuration ``R[p]``, whose
atom ``i`` sits where atom ``p[i]`` of ``R`` was (and ``z[p] == z`` because a
symmetry only exchanges atoms of one element). Its inverse distances are
``A[np.ix_(p, p)]``. Applying ``p`` and then ``q`` gives ``R[p][q] == R[p[q]]``,
so that composition is ``p[q]``; the inverse of ``p`` is ``np.argsort(p)``.
A group is returned as an array of shape (S, N), rows sorted lexicographically,
which puts the identity ``arange(N)`` first.

The detection (``find_permutations``), step by step
---------------------------------------------------
1. Draw ``n_samples`` frames at random (``numpy.random.default_rng(seed)``).
2. Describe each frame by its matrix of inverse distances A (method.md,
   "Descriptor": the same numbers the kernel compares, so a symmetry is judged
   in the space the model works in; it also weights bonded pairs most, so a
   relabelling has to keep bonds: with plain distances the two oxygens of
   aspirin's carboxyl group look exchangeable whenever the group rotates,
   although the O-H bond stays on one of them).
3. Candidate pairs: each frame with its ``n_neighbours`` nearest frames under a
   fingerprint that no relabelling changes (for each pair of elements, the
   sorted inverse distances between their atoms).
4. Each candidate pair (a, b) is matched: the permutation p minimising
   ``||A_a[p][:, p] - A_b||`` (a quadratic assignment problem). It is started
   from a linear assignment per element block
   (``scipy.optimize.linear_sum_assignment``) between per-atom profiles (each
   atom's sorted inverse distances to every element) and polished by exchanges
   of two atoms of one element while the objective decreases (2-opt).
   The residual of the pair is the smaller of the matched and the unmatched one.
5. Synchronisation: a minimum spanning tree over the residuals links every
   frame to the rest of the data through its closest matches; the permutations
   of its edges (when they beat the identity) are the candidates. A candidate
   must be realised on at least ``min_support`` tree edges (default 2): a
   one-off match usually belongs to an outlier frame whose nearest partner
   differs in a way that a relabelling only partly hides.
6. The kept permutations are closed under composition (``close_group``) and
   their orbits are the PE sets (``pe_sets_from_permutations``).

The ``sgdml`` package (Chmiela et al.) runs the same programme with a different
matcher (eigenvectors of the distance matrix, all pairs of frames); on the
eight rMD17 molecules both find the groups of method.md's table.

The package: ``groups`` (closing permutations into a group, orbits = PE sets),
``detect`` (the search on the data), ``graph`` (the bond-graph view),
``overrides`` (the user's sets), ``info`` (SymmetryInfo and how it is made);
the public names are importable from ``aff_app.symmetry``.
"""

from __future__ import annotations

from aff_app.symmetry.groups import (
    DEFAULT_MAX_ORDER,
    SymmetryError,
    close_group,
    cycle_notation,
    pe_sets_from_permutations,
)
from aff_app.symmetry.detect import find_permutations
from aff_app.symmetry.graph import bond_graph, graph_automorphisms
from aff_app.symmetry.overrides import parse_pe_sets, restrict_group, validate_pe_sets
from aff_app.symmetry.info import SymmetryInfo, detect_symmetry, user_symmetry

__all__ = [
    "DEFAULT_MAX_ORDER",
    "SymmetryError",
    "SymmetryInfo",
    "bond_graph",
    "close_group",
    "cycle_notation",
    "detect_symmetry",
    "find_permutations",
    "graph_automorphisms",
    "parse_pe_sets",
    "pe_sets_from_permutations",
    "restrict_group",
    "user_symmetry",
    "validate_pe_sets",
]


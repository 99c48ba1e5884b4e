"""Every kind of model the app trains: the GP modes of the method and the two peers.

* ``aff``, ``gdml``, ``sgdml`` — the force GPs of method.md (ours), with intervals;
* ``sgdml-package`` — the reference sGDML implementation, trained through the
  package itself (``aff_app.peers.package_model``), forces and energies, no interval;
* ``dcf`` — a DCF-style direct covariant force network (``aff_app.dcf``): forces
  only, no energy and no interval.

The pages, the CLI and the learning curves take their choices and labels from here.
"""

from __future__ import annotations

from aff_app.gp.budget import CostEstimate

#: The force GPs of method.md (``aff_app.gp.force.MODES``; spelled out so that the CLI's parser imports no scipy).
GP_MODES = ("aff", "gdml", "sgdml")

__all__ = ["GP_MODES", "PEER_MODES", "ALL_MODES", "MODE_LABELS", "has_interval", "uses_symmetry", "has_energy",
           "no_interval_note", "peer_cost", "DCF_SECONDS_PER_FRAME_ATOM"]

PEER_MODES = ("sgdml-package", "dcf")
ALL_MODES = tuple(GP_MODES) + PEER_MODES
MODE_LABELS = {"aff": "AFF", "gdml": "GDML", "sgdml": "sGDML", "sgdml-package": "sgdml package",
               "dcf": "DCF-style net"}
#: Rough training seconds of the DCF-style network per training frame and atom at its default settings
#: (benchmarks/bench_dcf.py on the 2-core reference machine measured 0.004-0.007; the fit stops at its time limit anyway).
DCF_SECONDS_PER_FRAME_ATOM = 0.008


def has_interval(mode: str) -> bool:
    """True for the GP modes: the peers predict means only."""
    return mode in GP_MODES


def uses_symmetry(mode: str) -> bool:
    """True when the fit takes our symmetry record (AFF's PE sets, sGDML's group); the package finds its own."""
    return mode in ("aff", "sgdml")


def has_energy(mode: str) -> bool:
    """True when the model predicts energies (all but the direct-force network)."""
    return mode != "dcf"


def no_interval_note(mode: str) -> str | None:
    """What to say where intervals are shown and this model has none (None for the GP modes)."""
    if has_interval(mode):
        return None
    label = MODE_LABELS.get(mode, mode)
    if mode == "dcf":
        return f"{label}: a direct-force network with no predictive interval (means only); no energies."
    return f"{label}: the reference package gives no predictive interval (means only)."


def peer_cost(mode: str, n_train: int, n_atoms: int, n_perms: int = 1) -> CostEstimate:
    """Memory and time of training a peer at M = ``n_train`` (a :class:`CostEstimate` like the GP fits')."""
    from aff_app.peers.sgdml import DEFAULT_SIGMA_TRIALS, sgdml_memory_bytes, sgdml_time_seconds

    m, n = int(n_train), int(n_atoms)
    if mode == "sgdml-package":
        side = 3 * m * n
        return CostEstimate(n_train=m, set_sizes=(n,), n_perms=int(n_perms), matrix_sides=(side,),
                            peak_bytes=sgdml_memory_bytes(m, n), cholesky_flops=DEFAULT_SIGMA_TRIALS * side**3 / 3.0,
                            seconds=sgdml_time_seconds(m, n, n_perms=n_perms))
    if mode == "dcf":
        # features and their derivatives of every training atom, float64, a few copies during training
        peak = 64 * 2**20 + 4 * m * n * 400 * 8
        return CostEstimate(n_train=m, set_sizes=(1,) * n, n_perms=1, matrix_sides=(0,), peak_bytes=int(peak),
                            cholesky_flops=0.0, seconds=DCF_SECONDS_PER_FRAME_ATOM * m * n)
    raise ValueError(f"not a peer: {mode!r}")

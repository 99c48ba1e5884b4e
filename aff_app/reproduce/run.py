"""Reproduce the paper's Table I, Fig. 3 and Fig. 5 on the MD17 data beside the project.

For each molecule (naphthalene, benzene, uracil, aspirin in
``../shared/data/md17``) and each label set (``md17``: the original MD17
labels ``E_md17``/``F_md17`` the paper used; ``rmd17``: the recomputed ones)
it trains and tests, on ONE seeded split per molecule shared by every method
and both label sets:

* AFF (``aff_app.gp.force``, one GP per PE set, γ and λ by profile
  likelihood) at the paper's training size (naphthalene 1600, benzene 1200,
  uracil 1600, aspirin 1200) or the largest that fits the memory budget and
  the time limit (the output says which and why), and at the learning-curve
  sizes; energies by the energy GP conditioned on the predicted forces
  (``fit_energy_model``, trained on the same frames);
* our own full-covariance modes GDML and sGDML (one set of all atoms) at the
  sizes within budget, energies by integrating the force GP
  (``fit_integrated_energy``, the GDML recipe);
* the reference package ``sgdml`` (``aff_app.peers.sgdml``) at the paper's M = 1000
  where its kernel fits this machine's memory and its estimated time fits the
  per-run limit, else at the largest M that does (decided from a memory
  pre-check and a time estimate calibrated on a pilot run at a small M).

Metrics on the held-out test frames (method.md "What the paper reports"):
energy MAE (kcal/mol), force MAE (kcal/mol/Å), training time (s; AFF: the
symmetry search + force fit with its hyperparameter search + energy fit;
sgdml: the wall time of ``sgdml all``, which includes its own permutation
search and σ selection), PCI(95%) and LCI(95%) of the latent-force intervals,
L_norm = LCI / range of the test forces, Δp = 0.95 − PCI.

The split: ``rng = numpy.random.default_rng(seed)`` permutes the frames; the
first ``n_test`` are the test frames, the next ``n_valid`` the validation
frames (sgdml's σ selection), the rest, in that random order, the training
pool: a model with M frames trains on the first M of the pool (nested
learning-curve sets). The same rule as ``benchmarks/bench_forces.py``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from aff_app import __version__
from aff_app.parallel import Executor, SerialExecutor, Task
from aff_app.gp.budget import ComputeBudgetError, check_budget, estimate_cost
from aff_app.reproduce.md17 import LABEL_DESCRIPTIONS
from aff_app.reproduce.planning import ReproSplit, choose_aff_m, choose_peer_m, estimate_aff_seconds, make_split
from aff_app.reproduce.points import aff_point, baseline_point, point
from aff_app.reproduce.settings import (
    METHOD_AFF,
    METHOD_GDML,
    METHOD_PEER,
    METHOD_SGDML,
    PAPER_NOTES,
    PAPER_TABLE_I,
    ROW_UNITS,
    Progress,
    ReproduceError,
    ReproduceSettings,
    _noop,
)
from aff_app.symmetry import detect_symmetry
from aff_app.workflows.metrics import mae

__all__ = ["run_reproduction"]

# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def _load(settings: ReproduceSettings, molecule: str, label_set: str):
    from aff_app.io.files import load_trajectory

    path = Path(settings.data_dir) / f"{molecule}.npz"
    if not path.is_file():
        raise ReproduceError(f"no data for {molecule!r}: {path} does not exist (see ../shared/data/README.md)")
    return load_trajectory(path, label_set=label_set)


def _paper(molecule: str) -> dict | None:
    p = PAPER_TABLE_I.get(molecule)
    if p is None:
        return None
    out = {"m_aff": p["m_aff"], "m_sgdml": p["m_sgdml"], "energy_mae_aff": p["energy_mae"][0],
           "energy_mae_sgdml": p["energy_mae"][1], "force_mae_aff": p["force_mae"][0],
           "force_mae_sgdml": p["force_mae"][1], "train_s_aff": p["train_s"][0], "train_s_sgdml": p["train_s"][1],
           "pci_aff": p["pci"], "lci_aff": p["lci"]}
    if molecule in PAPER_NOTES:
        out["note"] = PAPER_NOTES[molecule]
    return out


def run_reproduction(settings: ReproduceSettings | None = None, *, progress: Progress | None = None,
                     workdir=None, executor: Executor | None = None,
                     on_point: Callable[[dict], None] | None = None) -> dict:
    """Run the reproduction and return its table rows and figure data.

    Parameters
    ----------
    settings : ReproduceSettings, optional
        Default: the full reproduction.
    progress : callable(fraction, message), optional
    workdir : path-like, optional
        Where the sgdml datasets and models go (default: a temporary folder).
    executor : aff_app.parallel.Executor, optional
        Where our own fits run (default: one after the other here). With a Dask executor
        (:func:`aff_app.parallel.open_executor`) each fit of a molecule (both label sets) is a
        task; the results, their order and the table are the same. The sgdml package runs
        here, after its molecule's fits.
    on_point : callable(point), optional
        Called with every finished point (dict, as in ``points``), in the order of ``points``
        within each molecule, as soon as it is known: a caller keeps them when the run stops early.

    Returns
    -------
    dict (JSON-ready)
        ``rows``: one Table-I row per molecule and label set (see
        :data:`ROW_UNITS`); ``points``: every trained model (method, M, force
        and energy MAE, training time, and for AFF PCI, LCI, L_norm, Δp) —
        the data of Fig. 3 and Fig. 5; ``choices``: the M used per molecule
        and why; ``splits``: the split of each molecule (indices);
        ``skipped``: what was not run and why; ``settings``; ``units``;
        ``timings``.

    Raises
    ------
    ReproduceError, aff_app.peers.sgdml.PeerUnavailableError (peer asked for but not installed)
    aff_app.parallel.TaskFailedError
        (Dask only) a fit failed on the cluster; the message names it, the points finished before it were
        passed to ``on_point``.
    """
    s = settings or ReproduceSettings()
    progress = progress or _noop
    t_start = time.perf_counter()
    if s.peer:
        from aff_app.peers.sgdml import PeerUnavailableError, require_sgdml

        try:
            require_sgdml("sgdml.predict")  # fail now, not after an hour of AFF fits
        except PeerUnavailableError as exc:
            raise PeerUnavailableError(f"{exc}, or run the reproduction without the peer (--no-peer)") from None
    peer_sets = tuple(ls for ls in (s.peer_label_sets or s.label_sets) if ls in s.label_sets) if s.peer else ()
    work = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="aff_reproduce_"))
    work.mkdir(parents=True, exist_ok=True)

    rows, points, skipped = [], [], []
    choices: dict[str, dict] = {}
    splits: dict[str, dict] = {}
    peer_runs: list[dict] = []
    n_units = len(s.molecules) * len(s.label_sets)
    # each unit (molecule × label set) is shared equally by its planned models; our own fits run as
    # independent tasks (one batch per molecule, both label sets), the package's runs after them here
    n_peer = (len(s.peer_curve_m) + 1) if s.peer else 0
    n_tasks = max(1, len(set(s.curve_m)) + 1 + len(s.baseline_modes) * len(s.baseline_m) + n_peer)
    fits_share = (n_tasks - n_peer) / n_tasks
    ex = executor or SerialExecutor()
    emit = on_point or (lambda p: None)

    rate_holder: list = [None]  # dense Cholesky rate, measured once for the sgdml time estimates
    for k_mol, mol in enumerate(s.molecules):
        mol_base = k_mol * len(s.label_sets)
        trajs = {ls: _load(s, mol, ls) for ls in s.label_sets}
        first = trajs[s.label_sets[0]]
        for ls, tj in trajs.items():
            if tj.n_frames != first.n_frames or not np.array_equal(tj.R, first.R):
                raise ReproduceError(f"{mol}: the {ls} labels do not come with the same frames as {s.label_sets[0]}")
        split = make_split(first.n_frames, s.n_test, s.n_valid, seed=s.seed, eval_frames=s.eval_frames)
        progress(mol_base / n_units, f"{mol}: symmetry search")
        t = time.perf_counter()
        sym = detect_symmetry(first.R, first.z, n_samples=200, seed=s.seed)
        t_sym = time.perf_counter() - t
        sizes = [int(v) for v in sym.set_sizes]
        aff_m, aff_why, aff_est = choose_aff_m(mol, sizes, sym.n_perms, split.eval.size, split.pool.size,
                                               requested=s.aff_m, time_limit_s=s.aff_time_limit_s,
                                               memory_bytes=s.memory_bytes,
                                               requested_by="quick run" if s.quick else "as requested")
        curve = sorted({int(m) for m in s.curve_m if m < aff_m} | {aff_m})
        choice = {"m_aff": aff_m, "m_aff_reason": aff_why, "aff_estimates": aff_est, "aff_curve_m": curve,
                  "n_atoms": first.n_atoms, "n_perms": sym.n_perms, "pe_set_sizes": sizes,
                  "symmetry_s": t_sym, "m_sgdml": None, "m_sgdml_reason": "not run (no peer)" if not s.peer else ""}
        choices[mol] = choice
        used_sizes = set(curve)

        # plan our own fits of both label sets (what is skipped is decided here, before anything runs)
        tasks: list[Task] = []
        owner: list[str] = []
        unit_skipped: dict[str, list] = {ls: [] for ls in s.label_sets}
        split_h = ex.scatter(split)
        for ls in s.label_sets:
            traj = trajs[ls]
            data = ex.scatter(traj)  # sent to a cluster once, named by every task of this label set
            pre = f"{mol}/{ls}"
            for m in curve:
                tasks.append(Task(name=f"{pre} AFF M={m}", fn=aff_point, args=(data, split_h, sym, t_sym, m, s, mol),
                                  progress_kw="progress",
                                  weight=estimate_aff_seconds(m, sizes, sym.n_perms, split.eval.size)))
                owner.append(ls)
            modes = list(s.baseline_modes)
            if sym.n_perms == 1 and "sgdml" in modes:
                # a trivial group makes sGDML the very same model as GDML (paper Fig. 3 caption): fit it once
                modes = [m for m in modes if m != "sgdml"] + ([] if "gdml" in modes else ["gdml"])
                unit_skipped[ls].append({"molecule": mol, "label_set": ls, "method": METHOD_SGDML,
                                         "reason": "the permutation group is trivial: sGDML equals GDML "
                                                   "(paper Fig. 3); shown as GDML"})
            for mode in modes:
                for m in s.baseline_m:
                    est = estimate_aff_seconds(m, [first.n_atoms], sym.n_perms if mode == "sgdml" else 1,
                                               split.eval.size, with_std=False)
                    name = METHOD_GDML if mode == "gdml" else METHOD_SGDML
                    try:
                        check_budget(estimate_cost(m, [first.n_atoms]), s.memory_bytes, what=f"{mode} fit")
                    except ComputeBudgetError as exc:
                        unit_skipped[ls].append({"molecule": mol, "label_set": ls, "method": name, "M": m,
                                                 "reason": str(exc)})
                        continue
                    if est > s.baseline_time_limit_s:
                        unit_skipped[ls].append({"molecule": mol, "label_set": ls, "method": name, "M": m,
                                                 "reason": f"estimated {est / 60:.0f} min > "
                                                           f"{s.baseline_time_limit_s / 60:.0f} min limit"})
                        continue
                    tasks.append(Task(name=f"{pre} {mode} M={m}", fn=baseline_point,
                                      args=(data, split_h, sym, t_sym, mode, m, s, mol), progress_kw="progress",
                                      weight=est))
                    owner.append(ls)
                    used_sizes.add(m)

        def fits_progress(f: float, msg: str, base=mol_base) -> None:
            progress(min((base + f * len(s.label_sets) * fits_share) / n_units, 1.0), msg)

        fitted = ex.run(tasks, on_result=lambda i, pt: emit(pt), progress=fits_progress)

        peer_m: int | None = None
        for k_ls, ls in enumerate(s.label_sets):
            traj = trajs[ls]
            pre = f"{mol}/{ls}"
            mol_points = [pt for pt, o in zip(fitted, owner) if o == ls]
            skipped.extend(unit_skipped[ls])
            n_fitted = len(mol_points)
            peer_point = None
            if ls in peer_sets:
                unit = mol_base + k_ls

                def peer_progress(f: float, msg: str, unit=unit) -> None:
                    progress(min((unit + fits_share + (1 - fits_share) * f) / n_units, 1.0), f"{pre} sgdml: {msg}")

                peer_point, peer_m = _run_peer(traj, split, s, mol, ls, work, peer_m, choice, peer_runs, skipped,
                                               mol_points, used_sizes, peer_progress, rate_holder=rate_holder)
            elif s.peer:
                skipped.append({"molecule": mol, "label_set": ls, "method": METHOD_PEER,
                                "reason": f"the package runs on the label sets {list(peer_sets)} only"})
            for pt in mol_points[n_fitted:]:
                emit(pt)
            points.extend(mol_points)
            aff_row = next(p for p in mol_points if p["method"] == METHOD_AFF and p["M"] == aff_m)
            row = _row(mol, ls, aff_row, peer_point, choice, split)
            if peer_point is not None and "note" in peer_point:
                row["sgdml_note"] = peer_point["note"]
            if s.peer and ls not in peer_sets:
                row["m_sgdml_reason"] = f"not run on the {ls} labels (the package runs on {', '.join(peer_sets)})"
            if ls in peer_sets and peer_point is None:
                row["m_sgdml"] = peer_m
                row["sgdml_note"] = _peer_failure(skipped, mol, ls, peer_m) or choice.get("m_sgdml_reason", "")
            rows.append(row)
            progress((mol_base + k_ls + 1) / n_units, f"{pre} done")
        splits[mol] = split.to_dict(sorted(used_sizes))

    return {
        "version": __version__,
        "rows": rows,
        "points": points,
        "choices": choices,
        "skipped": skipped,
        "peer_runs": peer_runs,
        "splits": splits,
        "settings": s.to_dict(),
        "units": dict(ROW_UNITS),
        "labels": {k: LABEL_DESCRIPTIONS[k] for k in s.label_sets},
        "timings": {"total_s": time.perf_counter() - t_start},
        "scheduler": ex.choice.describe(),
        "notes": [
            "train_s: AFF = symmetry search + force fit (with its γ/λ search) + energy fit; our GDML/sGDML = force fit "
            "+ integrated energy; sgdml package = wall time of `sgdml all` (its permutation search, σ trials with "
            "validation, selection)",
            "PCI/LCI: latent-force intervals, mean ± 1.96 sd, over all force components of the test frames",
            "paper values: method.md Table I (AFF, with sGDML in parentheses); " + PAPER_NOTES["aspirin"],
        ],
    }


def _run_peer(traj, split, s, mol, ls, work, peer_m, choice, peer_runs, skipped, mol_points, used_sizes, progress,
              rate_holder) -> tuple[dict | None, int | None]:
    """The sgdml package on this label set: pilot sizes, then the table size (chosen on the first label set)."""
    from aff_app.peers.sgdml import measure_cholesky_rate, run_sgdml, sgdml_predict, write_sgdml_dataset

    z = traj.z
    ldir = work / mol / ls
    ldir.mkdir(parents=True, exist_ok=True)
    ev = split.eval
    valid_path = write_sgdml_dataset(ldir / "valid.npz", f"{mol}_{ls}_valid", traj.R[split.valid], z,
                                     traj.E[split.valid], traj.F[split.valid], theory=LABEL_DESCRIPTIONS[ls])
    results: dict[int, Any] = {}
    table_point = None

    def run(m: int):
        tr = split.train(m)
        path = write_sgdml_dataset(ldir / f"train_{m}.npz", f"{mol}_{ls}_train_{m}", traj.R[tr], z, traj.E[tr],
                                   traj.F[tr], theory=LABEL_DESCRIPTIONS[ls])
        progress(0.1, f"sgdml all at M={m} (limit {s.peer_timeout_s / 60:.0f} min)")
        r = run_sgdml(ldir, path, valid_path, m, split.valid.size, timeout_s=s.peer_timeout_s, n_atoms=traj.n_atoms,
                      sigmas=s.peer_sigmas, model_name=f"model_{m}.npz")
        rec = {"molecule": mol, "label_set": ls, **r.to_dict()}
        peer_runs.append(rec)
        results[m] = r
        if r.ok:  # one prediction pass (one model load) for the validation and the test frames
            nv = split.valid.size
            E_all, F_all = sgdml_predict(r.model_path, traj.R[np.concatenate([split.valid, ev])])
            E, F = E_all[nv:], F_all[nv:]
            # a model that predicts its own validation forces worse than zero forces would is broken
            # (seen: naphthalene, MD17 labels, M = 400, σ = 10 on its grid edge: test MAE 2·10⁴ kcal/mol/Å)
            val_mae, val_scale = mae(traj.F[split.valid], F_all[:nv]), float(np.mean(np.abs(traj.F[split.valid])))
            rec["valid_force_mae"] = val_mae
            if not np.isfinite(val_mae) or val_mae > val_scale:
                r = dataclasses.replace(r, ok=False, reason=(
                    f"its model (σ = {r.sigma}) predicts the validation forces with MAE {val_mae:.4g}, worse than "
                    f"zero forces ({val_scale:.4g} kcal/mol/Å): a broken solve"))
                rec.update(ok=False, reason=r.reason)
                results[m] = r
        if not r.ok:
            skipped.append({"molecule": mol, "label_set": ls, "method": METHOD_PEER, "M": m, "reason": r.reason})
            return None
        pt = point(mol, ls, METHOD_PEER, m, force_mae=mae(traj.F[ev], F), energy_mae=mae(traj.E[ev], E),
                    train_s=r.wall_s, extra={"sigma": r.sigma, "sigma_trials": r.sigma_trials,
                                             "sigma_on_edge": r.sigma_on_edge, "n_perms": r.n_perms,
                                             "solver": r.solver,
                                             "energy_method": "sgdml's integrated energy (GDMLPredict)"})
        mol_points.append(pt)
        used_sizes.add(m)
        return pt

    for m in sorted(set(int(v) for v in s.peer_curve_m)):
        if s.peer_m is not None and m >= s.peer_m:
            continue
        run(m)
    if peer_m is None:
        if s.peer_m is not None:
            peer_m = int(s.peer_m)
            why = f"{'quick run' if s.quick else 'as requested'} (the paper's M = {s.peer_target_m})"
            from aff_app.peers.sgdml import check_sgdml_fits

            ok, reason = check_sgdml_fits(peer_m, traj.n_atoms)
            if not ok:
                why += f"; {reason}"
        else:
            pilots = [r for r in results.values() if r.ok]
            pilot = max(pilots, key=lambda r: r.n_train) if pilots else None
            if rate_holder[0] is None:
                rate_holder[0] = measure_cholesky_rate()
            peer_m, why, est = choose_peer_m(traj.n_atoms, choice["n_perms"], split.pool.size,
                                             target=s.peer_target_m, timeout_s=s.peer_timeout_s, pilot=pilot,
                                             cholesky_rate=rate_holder[0])
            choice["sgdml_estimates"] = est
            choice["cholesky_rate_gflops"] = rate_holder[0] / 1e9
        choice["m_sgdml"], choice["m_sgdml_reason"] = peer_m, why
    if peer_m is None:
        return None, None
    if peer_m in results:
        table_point = next((p for p in mol_points if p["method"] == METHOD_PEER and p["M"] == peer_m), None)
    else:
        table_point = run(peer_m)
        largest_ok = max((p["M"] for p in mol_points if p["method"] == METHOD_PEER), default=0)
        mid = ((peer_m + largest_ok) // 2) // 100 * 100
        if table_point is None and mid > largest_ok and mid not in results:
            # one more try half-way down (sgdml's solver failed or broke at the table size)
            progress(0.6, f"sgdml all at M={peer_m} failed: trying M={mid}")
            table_point = run(mid)
    if table_point is None:
        # the table size failed (time-out, sgdml's own errors): report its largest finished run instead
        table_point = max((p for p in mol_points if p["method"] == METHOD_PEER), key=lambda p: p["M"], default=None)
    if table_point is not None and table_point["M"] != peer_m and peer_m in results:
        failed = _peer_failure(skipped, mol, ls, peer_m) or "it failed"
        table_point = {**table_point, "fallback_from_m": peer_m,
                       "note": f"the M = {peer_m} run failed ({failed}); its M = {table_point['M']} run is shown"}
    return table_point, peer_m


def _peer_failure(skipped: list, mol: str, ls: str, m) -> str | None:
    """Why the package's run at M = ``m`` on this molecule and label set did not count (None: no record)."""
    return next((k["reason"] for k in reversed(skipped) if k["molecule"] == mol and k["label_set"] == ls
                 and k["method"] == METHOD_PEER and k.get("M") == m), None)


def _row(mol: str, ls: str, aff: dict, peer: dict | None, choice: dict, split: ReproSplit) -> dict:
    return {
        "molecule": mol,
        "label_set": ls,
        "labels": LABEL_DESCRIPTIONS[ls],
        "m_aff": aff["M"],
        "m_aff_reason": choice["m_aff_reason"],
        "m_sgdml": None if peer is None else peer["M"],
        "m_sgdml_reason": choice.get("m_sgdml_reason", ""),
        "energy_mae_aff": aff["energy_mae"],
        "energy_mae_sgdml": None if peer is None else peer["energy_mae"],
        "force_mae_aff": aff["force_mae"],
        "force_mae_sgdml": None if peer is None else peer["force_mae"],
        "train_s_aff": aff["train_s"],
        "train_s_sgdml": None if peer is None else peer["train_s"],
        "pci_aff": aff["pci"],
        "lci_aff": aff["lci"],
        "l_norm_aff": aff["l_norm"],
        "delta_p_aff": aff["delta_p"],
        "n_test": int(split.eval.size),
        "n_test_pool": int(split.test.size),
        "paper": _paper(mol),
        "units": dict(ROW_UNITS),
    }



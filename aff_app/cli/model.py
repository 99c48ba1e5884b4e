"""CLI commands for symmetry, training, evaluation and prediction.

Registered with :func:`aff_app.cli.register` at import time (the module is
listed in ``aff_app.cli.COMMAND_MODULES``)::

    python -m aff_app symmetry DATA [--method data|graph] [--frames-used 200] [--seed 0]
    python -m aff_app train DATA --model aff|gdml|sgdml|sgdml-package|dcf --n-train M --out MODEL.npz [--seed S]
                                 [--gamma G --lam L] [--criterion likelihood|cv] [--pe-sets "0,1;2 3"]
                                 [--labels md17|rmd17] [--memory-budget-gb X] [--no-energy]
                                 [--solver auto|dense|iterative] [--scheduler serial|local|local:N|tcp://host:8786]
    python -m aff_app evaluate MODEL DATA [--n-test K] [--seed S] [--level 0.95] [--interval latent|observation]
    python -m aff_app predict MODEL DATA --out OUT.extxyz|OUT.csv [--frames ...]

``train``, ``evaluate`` and ``predict`` go through the one workflow
(:mod:`aff_app.workflows.pipeline`) and the one model file
(:mod:`aff_app.gp.persistence`): a model downloaded from the Train page works
here and a model written here uploads there. ``train`` fits the energy model
too (unless ``--no-energy``); ``evaluate`` reports the energy metrics beside the
force metrics, so ``train DATA --labels md17 --n-train 1600`` then ``evaluate``
gives a row of the paper's Table I. ``train --scheduler`` runs the independent parts of the
one force fit — the γ grid of the search, the PE sets with large kernels — as Dask tasks
(:mod:`aff_app.parallel`, ``fit_force_model(executor=)``); the model is the serial one's up to
BLAS rounding, and ``--json`` names the scheduler and the sets that ran on it.

Each ``run`` returns a JSON-ready dict; ``aff_app.cli`` prints it (``--json``:
one JSON object on the last stdout line) and turns user errors into exit
code 2. Forces are reported in kcal/mol/Å, energies in kcal/mol.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from aff_app import units
from aff_app.cli import CLIError, add_data_arguments, load_from_args, register
from aff_app.io.validation import format_value

__all__: list[str] = []


# -- helpers ---------------------------------------------------------------------------
def _progress_printer(args):
    """``progress(fraction, message)`` writing to stderr, silent with --json."""

    def progress(fraction: float, message: str = "") -> None:
        if not args.json:
            print(f"\r{100 * fraction:5.1f}% {message[:70]:<70}", end="", file=sys.stderr, flush=True)

    return progress


def _end_progress(args) -> None:
    if not args.json:
        print(file=sys.stderr)


def _load_model(path: str):
    """The model file (force model, and its energy model when the file has one): a ``pipeline.Trained``."""
    from aff_app.workflows import pipeline

    return pipeline.load(path)


def _element(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[int(z)]


def _pe_set_records(sets, z) -> list[dict]:
    """One record per set; ``element`` is the symbol, or the formula of a set of all atoms (GDML/sGDML)."""
    from aff_app.workflows.training import formula_of

    z = np.asarray(z)
    out = []
    for s in sets:
        zs = z[np.asarray(s, dtype=np.int64)]
        element = _element(zs[0]) if np.all(zs == zs[0]) else formula_of(zs)
        out.append({"atoms": [int(i) for i in s], "element": element, "size": int(len(s))})
    return out


def _describe_sets(records: list[dict]) -> str:
    return "; ".join(f"{r['size']} {r['element']} [{' '.join(map(str, r['atoms']))}]" for r in records)


def _out_path_npz(out: str) -> Path:
    p = Path(out).expanduser()
    if p.suffix.lower() != ".npz":
        p = p.with_name(p.name + ".npz")  # np.savez would append it anyway: say so up front
    if not p.parent.exists():
        raise FileNotFoundError(f"the output folder {str(p.parent)!r} does not exist")
    return p


# -- symmetry ---------------------------------------------------------------------------
def _add_symmetry(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--method", choices=("data", "graph"), default="data",
                   help="search the trajectory's frames (data, default) or the bond graph of frame 0 (graph)")
    p.add_argument("--frames-used", type=int, default=200, help="frames sampled by the data search (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the frame sample (default 0)")


def _run_symmetry(args) -> dict:
    from aff_app.symmetry import cycle_notation, detect_symmetry

    traj = load_from_args(args)
    sym = detect_symmetry(traj.R, traj.z, method=args.method, n_samples=args.frames_used, seed=args.seed)
    records = _pe_set_records(sym.pe_sets, traj.z)
    return {
        "path": str(args.data),
        "formula": traj.formula,
        "n_atoms": traj.n_atoms,
        "n_frames": traj.n_frames,
        "method": sym.method,
        "frames_used": sym.n_samples,
        "seed": sym.seed,
        "n_perms": sym.n_perms,
        "n_sets": sym.n_sets,
        "set_sizes": sym.set_sizes.tolist(),
        "pe_sets": records,
        "permutations": [cycle_notation(p) for p in sym.perms],
    }


def _render_symmetry(r: dict) -> str:
    used = f"{r['frames_used']} frames, seed {r['seed']}" if r["method"] == "data" else "bond graph of frame 0"
    lines = [
        f"{r['formula']} ({r['n_atoms']} atoms), {r['method']} search ({used})",
        f"permutations: {r['n_perms']}",
        f"PE sets: {r['n_sets']} (sizes {r['set_sizes']})",
    ]
    for k, s in enumerate(r["pe_sets"]):
        lines.append(f"  set {k}: {s['size']} {s['element']}: {' '.join(map(str, s['atoms']))}")
    shown = r["permutations"][:12]
    lines.append("permutations (cycle notation): " + ", ".join(shown) + (" ..." if len(r["permutations"]) > 12 else ""))
    return "\n".join(lines)


# -- train ------------------------------------------------------------------------------
def _add_train(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    from aff_app.workflows.kinds import ALL_MODES

    p.add_argument("--model", choices=ALL_MODES, default="aff",
                   help="aff: one GP per PE set (default); gdml: all atoms, no symmetry; sgdml: all atoms, "
                        "permutation-symmetric kernel; sgdml-package: the sgdml package itself (`sgdml all`, "
                        "optional install); dcf: a DCF-style direct-force network (forces only). The last two "
                        "predict no interval")
    p.add_argument("--n-train", type=int, required=True, help="training frames M, drawn at random with --seed")
    p.add_argument("--seed", type=int, default=0, help="seed of the training-frame draw (default 0)")
    p.add_argument("--out", required=True, help="model file to write (.npz)")
    p.add_argument("--gamma", type=float, default=None, help="fix the range γ (1/Å, descriptor units)")
    p.add_argument("--lam", type=float, default=None, help="fix the nugget λ")
    p.add_argument("--criterion", choices=("likelihood", "cv"), default="likelihood",
                   help="hyperparameter search criterion: profile likelihood (default) or leave-one-frame-out CV")
    p.add_argument("--no-energy", action="store_true",
                   help="fit the force model only (default: also the energy model, when the data has energies)")
    p.add_argument("--energy-model", choices=("integrated", "gp"), default="integrated",
                   help="AFF's energy: integrated forces of an sGDML fit on a spread subset plus a GP on the other "
                        "training energies (default; needs 60 frames), or the energy GP conditioned on the "
                        "predicted forces (method.md)")
    p.add_argument("--pe-sets", default=None,
                   help='override the PE sets: 0-based atom indices, sets split by ";", e.g. "0,1;2 3" '
                        "(unlisted atoms are singletons)")
    p.add_argument("--symmetry-method", choices=("data", "graph"), default="data",
                   help="how to find the permutations (default: data)")
    p.add_argument("--symmetry-frames", type=int, default=200, help="frames sampled by the symmetry search (default 200)")
    p.add_argument("--memory-budget-gb", type=float, default=None,
                   help="refuse fits whose kernels need more memory (GB); default: AFF_MEMORY_BUDGET_GB or 60%% of RAM")
    p.add_argument("--solver", choices=("auto", "dense", "iterative"), default="auto",
                   help="auto (default): factor the PE sets' kernels when they fit the memory budget, else (AFF) "
                        "conjugate gradients on the matrix-free kernel; dense; iterative (AFF only)")
    p.add_argument("--scheduler", default="serial", metavar="WHERE",
                   help="where the independent parts of the force fit run (the hyperparameter search's γ grid, "
                        "PE sets with large kernels): 'serial' (default, this process), 'local' (a Dask "
                        "LocalCluster, one worker per core), 'local:N' (N workers) or 'tcp://host:8786' (a running "
                        "Dask scheduler); the same model up to rounding")


def _run_train(args) -> dict:
    from aff_app.gp.record import Timings
    from aff_app.parallel import open_executor, parse_scheduler
    from aff_app.workflows import pipeline
    from aff_app.workflows.metrics import finite_or_none
    from aff_app.workflows.training import resolve_symmetry

    choice = parse_scheduler(args.scheduler)  # a bad --scheduler fails before any work
    out = _out_path_npz(args.out)
    if args.memory_budget_gb is not None and not args.memory_budget_gb > 0:
        raise CLIError(f"--memory-budget-gb must be > 0, got {args.memory_budget_gb}")
    from aff_app.workflows.kinds import PEER_MODES, uses_symmetry

    if not uses_symmetry(args.model) and args.pe_sets:
        raise CLIError(f"--pe-sets applies to --model aff and sgdml; {args.model} takes no PE sets")
    if args.model in PEER_MODES and (args.gamma is not None or args.lam is not None):
        raise CLIError(f"--gamma/--lam are the GP's hyperparameters; --model {args.model} chooses its own")
    if args.model in PEER_MODES and not choice.is_serial:
        raise CLIError(f"--scheduler runs parts of a GP fit (aff, gdml, sgdml); --model {args.model} trains in "
                       "this process")
    t0 = time.perf_counter()
    traj = load_from_args(args)
    budget = None if args.memory_budget_gb is None else int(args.memory_budget_gb * 2**30)
    settings = pipeline.TrainSettings(mode=args.model, gamma=args.gamma, lam=args.lam, criterion=args.criterion,
                                      energy=not args.no_energy, energy_model=args.energy_model,
                                      budget_bytes=budget, solver=args.solver,
                                      keep_factors=False)  # written and done: one kernel buffer
    progress = _progress_printer(args)
    symmetry, t_sym = None, None
    if uses_symmetry(args.model) and (args.pe_sets or args.symmetry_method != "data"):
        ts = time.perf_counter()
        symmetry = resolve_symmetry(traj, method=args.symmetry_method, n_samples=args.symmetry_frames,
                                    seed=args.seed, pe_sets=args.pe_sets)
        t_sym = time.perf_counter() - ts
    try:
        with open_executor(choice) as executor:
            choice = executor.choice  # as started: the workers and memory limit it chose
            # serial: the fit as before, no executor (a serial one would change nothing)
            remote = {} if choice.is_serial else {"executor": executor}
            trained = pipeline.train(traj, n_train=args.n_train, seed=args.seed, settings=settings,
                                     symmetry=symmetry, n_symmetry_frames=args.symmetry_frames, progress=progress,
                                     **remote)
    finally:
        _end_progress(args)
    timings: Timings = trained.timings
    if t_sym is not None:  # the search ran here, before pipeline.train
        timings.symmetry_s = t_sym
        timings.total_s = (timings.total_s or 0.0) + t_sym
    pipeline.save(trained, out)
    model, energy = trained.force, trained.energy
    rec = model.record
    return {
        "path": str(out),
        "model": model.mode,
        "formula": traj.formula,
        "n_atoms": model.n_atoms,
        "n_train": model.n_train,
        "n_frames": traj.n_frames,
        "seed": args.seed,
        "label_set": traj.provenance.label_set,
        "gamma": finite_or_none(model.gamma),
        "lam": finite_or_none(model.lam),
        "sigma2": model.sigma2.tolist() if hasattr(model, "sigma2") else None,
        "has_interval": bool(model.has_interval),
        "criterion": rec.criterion,
        "gamma_fixed": args.gamma is not None,
        "search_converged": rec.search.converged,
        "converged": rec.search.converged,
        "lam_at_floor": rec.search.lam_at_floor,
        "warnings": [w + (" On the command line: evaluate the model, or fix γ and λ with --gamma/--lam."
                          if w.startswith("The hyperparameter search") else "") for w in trained.warnings],
        "n_perms": int(model.perms.shape[0]) if hasattr(model, "perms") else getattr(model, "n_perms", None),
        "pe_sets": _pe_set_records(model.pe_sets, model.z) if hasattr(model, "pe_sets") else None,
        "energy_model": _energy_kind(energy),
        "energy_gamma": None if energy is None else getattr(energy, "gamma", None),
        "energy_lam": None if energy is None else getattr(energy, "lam", None),
        "training_time_s": timings.train_s,
        "wall_time_s": time.perf_counter() - t0,
        "timings": {"symmetry_s": timings.symmetry_s or 0.0, "search_s": timings.search_s,
                    "build_s": timings.build_s, "cholesky_s": timings.cholesky_s, "force_s": timings.force_s,
                    "energy_s": timings.energy_s, "total_s": timings.total_s},
        "data_fingerprint": rec.data_fingerprint,
        "solver": _solver_summary(model, budget, args.solver),
        "scheduler": choice.to_dict(),
    }


def _solver_summary(model, budget: int | None, solver: str) -> dict | None:
    """The fit's solver (``record.solver``) and the budget estimate of the path it took (GP models only)."""
    rec = getattr(getattr(model, "record", None), "solver", None)
    if rec is None or not hasattr(model, "pe_sets"):
        return None
    from aff_app.gp.budget import estimate_cost

    est = estimate_cost(model.n_train, [s.size for s in model.pe_sets], n_perms=int(model.perms.shape[0]),
                        keep_factors=False, solver=solver if model.mode == "aff" else "dense",
                        budget_bytes=budget, n_atoms=model.n_atoms)
    return {"method": rec.method, "reason": rec.reason, "iterations": list(rec.iterations) or None,
            "held_out_iterations": None if rec.held_out_iterations is None else list(rec.held_out_iterations),
            "lam_search": rec.lam_search, "lam": rec.lam, "lam_raised": rec.lam_raised,
            "nystrom_frames": rec.nystrom_frames, "estimate": est.to_dict(),
            "scheduler": rec.scheduler, "task_sets": list(rec.task_sets), "tasks_s": rec.tasks_s}


def _energy_kind(energy) -> str | None:
    return None if energy is None else energy.label


def _render_train(r: dict) -> str:
    t = r["timings"]
    energy = "no energy model" if r["energy_model"] is None else f"energy model: {r['energy_model']}"
    from aff_app.workflows.kinds import MODE_LABELS, no_interval_note

    lines = [
        f"{MODE_LABELS.get(r['model'], r['model'])} model of {r['formula']} written to {r['path']} ({energy})",
        f"trained on {r['n_train']} of {r['n_frames']} frames (seed {r['seed']}, labels {r['label_set'] or '?'})",
    ]
    if r["gamma"] is not None:
        lines.append(f"γ = {r['gamma']:.6g} 1/Å, λ = {r['lam']:.3g} ({r['criterion']}"
                     + ("" if r["search_converged"] is None else f", converged: {r['search_converged']}") + ")")
    if r["pe_sets"] is not None:
        lines.append(f"PE sets ({len(r['pe_sets'])}, {r['n_perms']} permutations): {_describe_sets(r['pe_sets'])}")
    if not r["has_interval"]:
        lines.append(no_interval_note(r["model"]))
    if t["search_s"] is not None:
        lines.append(f"training time {r['training_time_s']:.2f} s: symmetry {t['symmetry_s']:.2f} s, force fit "
                     f"{t['force_s']:.2f} s (search {t['search_s']:.2f} s, build {t['build_s']:.2f} s, Cholesky "
                     f"{t['cholesky_s']:.2f} s)" + ("" if t["energy_s"] is None else f", energy fit {t['energy_s']:.2f} s")
                     + f"; the whole command {r['wall_time_s']:.2f} s")
    else:
        lines.append(f"training time {r['training_time_s']:.2f} s; the whole command {r['wall_time_s']:.2f} s")
    sv = r.get("solver")
    if sv is not None:
        line = f"solver: {sv['method']} ({sv['reason']}); estimate: {sv['estimate']['summary']}"
        if sv["method"] == "iterative":
            line += (f"; CG iterations per PE set {sv['iterations']} (held-out calibration solve "
                     f"{sv['held_out_iterations']}), {sv['nystrom_frames']} preconditioner frames")
            if sv["lam_raised"]:
                line += f"; λ raised from the search's {sv['lam_search']:.3g} to the iterative floor {sv['lam']:.3g}"
        lines.append(line)
    sched = r.get("scheduler")
    if sched is not None and sched["kind"] != "serial":
        searched_gamma = r["criterion"] != "fixed" and not r.get("gamma_fixed")
        ran = ["the γ grid of the search"] if searched_gamma else []
        tasks = (sv or {}).get("task_sets") or []
        if tasks:
            ran.append(f"PE sets {tasks} ({sv['tasks_s']:.2f} s)")
        here = ("" if tasks or (sv or {}).get("method") != "dense" else
                "; every PE set was factored here (kernels below the task size, or beyond a worker's memory)")
        lines.append(f"scheduler: {sched['description']}: " + (" and ".join(ran) or "nothing") + " ran on it" + here)
    lines.extend(f"warning: {w}" for w in r.get("warnings") or [])
    return "\n".join(lines)


# -- evaluate -----------------------------------------------------------------------------
def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model file written by 'train' or the Train page (.npz)")
    add_data_arguments(p)
    p.add_argument("--n-test", type=int, default=None,
                   help="held-out frames to test on, drawn with --seed (default: every frame the model did not "
                        "train on, or the test frames recorded at training on the training data)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test-frame draw (default 0)")
    p.add_argument("--level", type=float, default=0.95, help="interval level for PCI and LCI (default 0.95)")
    p.add_argument("--interval", choices=("latent", "observation"), default="latent",
                   help="interval on the force itself (latent, default) or on a new noisy label (observation)")


def _run_evaluate(args) -> dict:
    from aff_app.workflows import pipeline
    from aff_app.workflows.training import check_atoms_match

    trained = _load_model(args.model)
    traj = load_from_args(args)
    check_atoms_match(trained.force.z, traj.z, what=f"the data {Path(str(args.data)).name!r}")
    if args.n_test is not None and args.n_test < 1:
        raise CLIError(f"--n-test must be >= 1, got {args.n_test}")
    progress = _progress_printer(args)
    t0 = time.perf_counter()
    try:
        res = pipeline.evaluate_model(trained, traj, n_test=args.n_test, seed=args.seed, level=args.level,
                                      kind=args.interval, progress=progress)
    finally:
        _end_progress(args)
    res.pop("test_idx")  # long; the selection is reproducible from --seed
    return {"model_path": str(args.model), "data_path": str(args.data), "formula": traj.formula,
            "label_set": traj.provenance.label_set, "seed": args.seed, **res,
            "prediction_time_s": time.perf_counter() - t0}


def _render_evaluate(r: dict) -> str:
    u, eu = r["units"]["force"], r["units"]["energy"]
    level = f"{100 * r['level']:g}%"
    from aff_app.workflows.kinds import MODE_LABELS, no_interval_note

    lines = [
        f"{MODE_LABELS.get(r['model'], r['model'])} model ({r['n_train']} training frames) on {r['n_test']} held-out "
        f"frames of {r['formula']} ({r['test_selection']})",
        f"force MAE  {format_value(r['force_mae'], u, 5)}",
        f"force RMSE {format_value(r['force_rmse'], u, 5)}   "
        f"(reference force std {format_value(r['reference_force_std'], u, 4)})",
        (f"PCI({level}) {format_value(100 * r['pci'], '%', 3)}   LCI {format_value(r['lci'], u, 5)}   "
         f"({r['interval']} interval)") if r["pci"] is not None else f"no interval: {no_interval_note(r['model'])}",
    ]
    if r["energy_mae"] is None:
        lines.append("energy: no energy model in the file" if r["energy_model"] is None
                     else "energy: the data has no reference energies")
    else:
        lines.append(f"energy MAE {format_value(r['energy_mae'], eu, 5)}   RMSE {format_value(r['energy_rmse'], eu, 5)}"
                     f"   ({r['energy_model']})")
        if r["energy_pci"] is not None:
            lines.append(f"energy PCI({level}) {format_value(100 * r['energy_pci'], '%', 3)}   "
                         f"energy LCI {format_value(r['energy_lci'], eu, 5)}")
    return "\n".join(lines)


# -- predict -------------------------------------------------------------------------------
def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model file written by 'train' or the Train page (.npz)")
    add_data_arguments(p)
    p.add_argument("--out", required=True,
                   help="output: .extxyz/.xyz (arrays forces_pred, forces_std; info energy_pred, energy_std) or .csv")
    p.add_argument("--force-unit", default=None,
                   help="unit of the written forces, e.g. 'eV/Å' or 'kcal/mol/Å' "
                        "(default: eV/Å for extxyz, as ASE expects; kcal/mol/Å for csv)")


def _parse_force_unit(text: str) -> tuple[str, str]:
    energy, sep, length = str(text).rpartition("/")
    if not sep or not energy:
        raise units.UnitError(f"cannot read force unit {text!r}: write ENERGY/LENGTH, e.g. 'eV/Å' or 'kcal/mol/Å'")
    return units.canonical_energy_unit(energy), units.canonical_length_unit(length)


def _run_predict(args) -> dict:
    from aff_app.workflows.predictions import PREDICTION_KEYS, predict_structures, predictions_file

    out = Path(args.out).expanduser()
    suffix = out.suffix.lower()
    if suffix not in (".extxyz", ".xyz", ".csv"):
        raise CLIError(f"--out must end in .extxyz, .xyz or .csv, got {out.name!r}")
    if not out.parent.exists():
        raise FileNotFoundError(f"the output folder {str(out.parent)!r} does not exist")
    fmt = "csv" if suffix == ".csv" else "extxyz"
    default_unit = ("kcal/mol", "Å") if fmt == "csv" else ("eV", "Å")
    eu, lu = _parse_force_unit(args.force_unit) if args.force_unit else default_unit
    trained = _load_model(args.model)
    model, energy = trained.force, trained.energy
    traj = load_from_args(args)
    progress = _progress_printer(args)
    t0 = time.perf_counter()
    try:
        record = predict_structures(model, energy, traj, progress=progress,
                                    what=f"the data {Path(str(args.data)).name!r}")
    finally:
        _end_progress(args)
    seconds = time.perf_counter() - t0
    pred_F, epred_E, in_train = record.F_mean, record.E_mean, record.in_train
    out.write_bytes(predictions_file(record, fmt, energy_unit=eu, length_unit=lu))
    result: dict[str, Any] = {
        "path": str(out),
        "format": fmt,
        "model": model.mode,
        "energy_model": _energy_kind(energy),
        "formula": traj.formula,
        "n_frames": traj.n_frames,
        "n_atoms": traj.n_atoms,
        "frames": traj.provenance.frames,
        "force_unit": units.force_unit_label(eu, lu),
        "energy_unit": eu,
        "std_kind": "latent" if record.F_std is not None else None,  # the peers predict means only
        "arrays": ([PREDICTION_KEYS["forces"]] + ([PREDICTION_KEYS["forces_std"]] if record.F_std is not None else [])
                   if fmt == "extxyz" else None),
        "n_training_frames": int(in_train.sum()),
        "prediction_time_s": seconds,
    }
    held = ~in_train
    if traj.F is not None and held.any():
        result["force_mae_held_out"] = float(np.mean(np.abs(pred_F[held] - traj.F[held])))
        result["force_mae_unit"] = units.FORCE_UNIT
    if traj.E is not None and epred_E is not None and held.any():
        result["energy_mae_held_out"] = float(np.mean(np.abs(epred_E[held] - traj.E[held])))
        result["energy_mae_unit"] = units.ENERGY_UNIT
    return result


register("symmetry", "find the permutation symmetry and PE sets of a trajectory", _add_symmetry, _run_symmetry,
         render=_render_symmetry)
register("train", "train an AFF, GDML or sGDML force model and its energy model (or a peer: the sgdml package, a DCF-style net), and write them (.npz)", _add_train, _run_train,
         render=_render_train)
register("evaluate", "force and energy MAE/RMSE, PCI and LCI of a model on held-out frames", _add_evaluate, _run_evaluate,
         render=_render_evaluate)
register("predict", "predict forces, energies and (GP models) their standard deviations for every frame of a file", _add_predict,
         _run_predict)

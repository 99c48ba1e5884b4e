"""CLI commands for symmetry, training, evaluation and prediction.

Registered with :func:`aff_app.cli.register` at import time (the module is
listed in ``aff_app.cli.COMMAND_MODULES``)::

    python -m aff_app symmetry DATA [--method data|graph] [--frames-used 200] [--seed 0]
    python -m aff_app train DATA --model aff|gdml|sgdml --n-train M --out MODEL.npz [--seed S]
                                 [--gamma G --lam L] [--criterion likelihood|cv] [--pe-sets "0,1;2 3"]
                                 [--labels md17|rmd17] [--memory-budget-gb X]
    python -m aff_app evaluate MODEL DATA --n-test K [--seed S] [--level 0.95] [--interval latent|observation]
    python -m aff_app predict MODEL DATA --out OUT.extxyz|OUT.csv [--frames ...]

Each ``run`` returns a JSON-ready dict; ``aff_app.cli`` prints it (``--json``:
one JSON object on the last stdout line) and turns expected errors into exit
code 2. Forces are reported in the data's internal unit, kcal/mol/Å.
"""

from __future__ import annotations

import argparse
import csv
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
    from aff_app.gp.force import ForceModel

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no such model file: {str(p)!r}")
    if p.is_dir():
        raise CLIError(f"{str(p)!r} is a directory, not a model file")
    return ForceModel.load(p)


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
    p.add_argument("--model", choices=("aff", "gdml", "sgdml"), default="aff",
                   help="aff: one GP per PE set (default); gdml: all atoms, no symmetry; sgdml: all atoms, "
                        "permutation-symmetric kernel")
    p.add_argument("--n-train", type=int, required=True, help="training frames M, drawn at random with --seed")
    p.add_argument("--seed", type=int, default=0, help="seed of the training-frame draw (default 0)")
    p.add_argument("--out", required=True, help="model file to write (.npz)")
    p.add_argument("--gamma", type=float, default=None, help="fix the range γ (1/Å, descriptor units)")
    p.add_argument("--lam", type=float, default=None, help="fix the nugget λ")
    p.add_argument("--criterion", choices=("likelihood", "cv"), default="likelihood",
                   help="hyperparameter search criterion: profile likelihood (default) or leave-one-frame-out CV")
    p.add_argument("--pe-sets", default=None,
                   help='override the PE sets: 0-based atom indices, sets split by ";", e.g. "0,1;2 3" '
                        "(unlisted atoms are singletons)")
    p.add_argument("--symmetry-method", choices=("data", "graph"), default="data",
                   help="how to find the permutations (default: data)")
    p.add_argument("--symmetry-frames", type=int, default=200, help="frames sampled by the symmetry search (default 200)")
    p.add_argument("--memory-budget-gb", type=float, default=None,
                   help="refuse fits whose kernels need more memory (GB); default: AFF_MEMORY_BUDGET_GB or 60%% of RAM")


def _run_train(args) -> dict:
    from aff_app.workflows.training import resolve_symmetry, train_model

    out = _out_path_npz(args.out)
    if args.memory_budget_gb is not None and not args.memory_budget_gb > 0:
        raise CLIError(f"--memory-budget-gb must be > 0, got {args.memory_budget_gb}")
    if args.model == "gdml" and args.pe_sets:
        raise CLIError("--pe-sets applies to --model aff and sgdml; gdml uses one set of all atoms and no symmetry")
    traj = load_from_args(args)
    budget = None if args.memory_budget_gb is None else int(args.memory_budget_gb * 2**30)
    progress = _progress_printer(args)
    symmetry, t_sym = None, None
    if args.model != "gdml" and (args.pe_sets or args.symmetry_method != "data"):
        t0 = time.perf_counter()
        symmetry = resolve_symmetry(traj, method=args.symmetry_method, n_samples=args.symmetry_frames,
                                    seed=args.seed, pe_sets=args.pe_sets)
        t_sym = time.perf_counter() - t0
    try:
        model = train_model(
            traj, model=args.model, n_train=args.n_train, seed=args.seed, gamma=args.gamma, lam=args.lam,
            criterion=args.criterion, symmetry=symmetry, n_symmetry_frames=args.symmetry_frames,
            budget_bytes=budget, progress=progress, keep_factors=False,  # written and done: one kernel buffer
        )
    finally:
        _end_progress(args)
    if t_sym is not None:  # the search ran here, before train_model
        model.info["timings"]["symmetry_s"] = t_sym
        model.info["timings"]["total_s"] += t_sym
    model.save(out)
    info = model.info
    hyper = info.get("hyper", {})
    timings = info.get("timings", {})
    warnings = _search_warnings(hyper, model.gamma, model.lam)
    return {
        "path": str(out),
        "model": model.mode,
        "formula": traj.formula,
        "n_atoms": model.n_atoms,
        "n_train": model.n_train,
        "n_frames": traj.n_frames,
        "seed": args.seed,
        "label_set": traj.provenance.label_set,
        "gamma": model.gamma,
        "lam": model.lam,
        "sigma2": model.sigma2.tolist(),
        "criterion": info.get("criterion"),
        "search_converged": hyper.get("converged"),
        "converged": hyper.get("converged"),
        "warnings": warnings,
        "n_perms": int(model.perms.shape[0]),
        "pe_sets": _pe_set_records(model.pe_sets, model.z),
        "training_time_s": timings.get("fit_s"),
        "timings": {k: timings.get(k) for k in ("symmetry_s", "search_s", "build_s", "cholesky_s", "fit_s", "total_s")},
        "data_fingerprint": info["data"]["fingerprint"],
    }


def _search_warnings(hyper: dict, gamma: float, lam: float) -> list[str]:
    """A human warning when the hyperparameter search stopped on the edge of its range."""
    if hyper.get("converged") is not False:
        return []
    hist = [h for h in hyper.get("history") or [] if len(h) == 3]
    where = []
    if hist:
        gs = [h[0] for h in hist]
        if gamma <= min(gs) * (1 + 1e-12):
            where.append(f"γ at the low end of the searched range ({min(gs):.4g}..{max(gs):.4g} 1/Å)")
        elif gamma >= max(gs) * (1 - 1e-12):
            where.append(f"γ at the high end of the searched range ({min(gs):.4g}..{max(gs):.4g} 1/Å)")
    if not where:
        where.append("λ at the edge of its grid" if hist else "the optimum on the edge of the searched range")
    return [
        f"the hyperparameter search did not converge ({'; '.join(where)}); the model was fitted with the last "
        f"values γ = {gamma:.6g} 1/Å, λ = {lam:.3g}. Check its held-out error (evaluate), or fix them with "
        "--gamma/--lam, or train on more frames"
    ]


def _render_train(r: dict) -> str:
    t = r["timings"]
    lines = [
        f"{r['model'].upper()} model of {r['formula']} written to {r['path']}",
        f"trained on {r['n_train']} of {r['n_frames']} frames (seed {r['seed']}, labels {r['label_set'] or '?'})",
        f"γ = {r['gamma']:.6g} 1/Å, λ = {r['lam']:.3g} ({r['criterion']}"
        + ("" if r["search_converged"] is None else f", converged: {r['search_converged']}") + ")",
        f"PE sets ({len(r['pe_sets'])}, {r['n_perms']} permutations): {_describe_sets(r['pe_sets'])}",
        f"training time {r['training_time_s']:.2f} s (search {t['search_s']:.2f} s, build {t['build_s']:.2f} s, "
        f"Cholesky {t['cholesky_s']:.2f} s; symmetry {t['symmetry_s']:.2f} s)",
    ]
    lines.extend(f"warning: {w}" for w in r.get("warnings") or [])
    return "\n".join(lines)


# -- evaluate -----------------------------------------------------------------------------
def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model file written by 'train' (.npz)")
    add_data_arguments(p)
    p.add_argument("--n-test", type=int, required=True, help="held-out frames to test on (never training frames)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test-frame draw (default 0)")
    p.add_argument("--level", type=float, default=0.95, help="interval level for PCI and LCI (default 0.95)")
    p.add_argument("--interval", choices=("latent", "observation"), default="latent",
                   help="interval on the force itself (latent, default) or on a new noisy label (observation)")


def _run_evaluate(args) -> dict:
    from aff_app.workflows.training import check_atoms_match, evaluate_model

    model = _load_model(args.model)
    traj = load_from_args(args)
    check_atoms_match(model.z, traj.z, what=f"the data {Path(str(args.data)).name!r}")
    progress = _progress_printer(args)
    try:
        res = evaluate_model(model, traj, n_test=args.n_test, seed=args.seed, level=args.level,
                             kind=args.interval, progress=progress)
    finally:
        _end_progress(args)
    res.pop("test_idx")  # long; the selection is reproducible from --seed
    return {"model_path": str(args.model), "data_path": str(args.data), "formula": traj.formula,
            "label_set": traj.provenance.label_set, "seed": args.seed, **res}


def _render_evaluate(r: dict) -> str:
    u = r["units"]["force"]
    return "\n".join([
        f"{r['model'].upper()} model ({r['n_train']} training frames) on {r['n_test']} held-out frames of "
        f"{r['formula']} ({r['test_selection']})",
        f"force MAE  {format_value(r['force_mae'], u, 5)}",
        f"force RMSE {format_value(r['force_rmse'], u, 5)}   "
        f"(reference force std {format_value(r['reference_force_std'], u, 4)})",
        f"PCI({100 * r['level']:g}%) {format_value(100 * r['pci'], '%', 3)}   LCI {format_value(r['lci'], u, 5)}   "
        f"({r['interval']} interval)",
    ])


# -- predict -------------------------------------------------------------------------------
def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model file written by 'train' (.npz)")
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="output: .extxyz/.xyz (arrays forces_pred, forces_std) or .csv")
    p.add_argument("--force-unit", default=None,
                   help="unit of the written forces, e.g. 'eV/Å' or 'kcal/mol/Å' "
                        "(default: eV/Å for extxyz, as ASE expects; kcal/mol/Å for csv)")


def _parse_force_unit(text: str) -> tuple[str, str]:
    energy, sep, length = str(text).rpartition("/")
    if not sep or not energy:
        raise units.UnitError(f"cannot read force unit {text!r}: write ENERGY/LENGTH, e.g. 'eV/Å' or 'kcal/mol/Å'")
    return units.canonical_energy_unit(energy), units.canonical_length_unit(length)


def _write_predictions_extxyz(path: Path, traj, mean, std, in_train, eu: str, lu: str) -> None:
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    ff = units.force_factor(units.ENERGY_UNIT, units.LENGTH_UNIT, eu, lu)
    ef = units.energy_factor(units.ENERGY_UNIT, eu)
    lf = units.length_factor(units.LENGTH_UNIT, lu)
    images = []
    for i in range(traj.n_frames):
        at = Atoms(numbers=traj.z, positions=traj.R[i] * lf)
        at.arrays["forces_pred"] = mean[i] * ff
        at.arrays["forces_std"] = std[i] * ff
        at.info["frame"] = i
        at.info["in_training_set"] = bool(in_train[i])
        at.info["energy_unit"] = eu
        at.info["length_unit"] = "Ang" if lu == "Å" else lu
        if traj.has_labels:  # reference labels as calculator results (ASE reads them back as such)
            at.calc = SinglePointCalculator(at, energy=float(traj.E[i] * ef), forces=traj.F[i] * ff)
        images.append(at)
    ase.io.write(str(path), images, format="extxyz")


def _write_predictions_csv(path: Path, traj, mean, std, in_train, eu: str, lu: str) -> None:
    ff = units.force_factor(units.ENERGY_UNIT, units.LENGTH_UNIT, eu, lu)
    lf = units.length_factor(units.LENGTH_UNIT, lu)
    fu = units.force_unit_label(eu, lu)
    header = ["frame", "atom", "element", f"x [{lu}]", f"y [{lu}]", f"z [{lu}]"]
    header += [f"f{c}_pred [{fu}]" for c in "xyz"] + [f"f{c}_std [{fu}]" for c in "xyz"]
    if traj.F is not None:
        header += [f"f{c}_ref [{fu}]" for c in "xyz"]
    header.append("in_training_set")
    symbols = [_element(z) for z in traj.z]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i in range(traj.n_frames):
            for a in range(traj.n_atoms):
                row: list[Any] = [i, a, symbols[a]]
                row += [repr(float(v)) for v in traj.R[i, a] * lf]
                row += [repr(float(v)) for v in mean[i, a] * ff]
                row += [repr(float(v)) for v in std[i, a] * ff]
                if traj.F is not None:
                    row += [repr(float(v)) for v in traj.F[i, a] * ff]
                row.append(int(in_train[i]))
                w.writerow(row)


def _run_predict(args) -> dict:
    from aff_app.workflows.training import check_atoms_match, training_positions_mask

    out = Path(args.out).expanduser()
    suffix = out.suffix.lower()
    if suffix not in (".extxyz", ".xyz", ".csv"):
        raise CLIError(f"--out must end in .extxyz, .xyz or .csv, got {out.name!r}")
    if not out.parent.exists():
        raise FileNotFoundError(f"the output folder {str(out.parent)!r} does not exist")
    fmt = "csv" if suffix == ".csv" else "extxyz"
    default_unit = ("kcal/mol", "Å") if fmt == "csv" else ("eV", "Å")
    eu, lu = _parse_force_unit(args.force_unit) if args.force_unit else default_unit
    model = _load_model(args.model)
    traj = load_from_args(args)
    check_atoms_match(model.z, traj.z, what=f"the data {Path(str(args.data)).name!r}")
    progress = _progress_printer(args)
    try:
        pred = model.predict(traj.R, progress=progress)
    finally:
        _end_progress(args)
    in_train = training_positions_mask(model, traj)
    writer = _write_predictions_csv if fmt == "csv" else _write_predictions_extxyz
    writer(out, traj, pred.mean, pred.std, in_train, eu, lu)
    result: dict[str, Any] = {
        "path": str(out),
        "format": fmt,
        "model": model.mode,
        "formula": traj.formula,
        "n_frames": traj.n_frames,
        "n_atoms": traj.n_atoms,
        "frames": traj.provenance.frames,
        "force_unit": units.force_unit_label(eu, lu),
        "std_kind": "latent",
        "arrays": ["forces_pred", "forces_std"] if fmt == "extxyz" else None,
        "n_training_frames": int(in_train.sum()),
    }
    if traj.F is not None:
        held = ~in_train
        if held.any():
            result["force_mae_held_out"] = float(np.mean(np.abs(pred.mean[held] - traj.F[held])))
            result["force_mae_unit"] = units.FORCE_UNIT
    return result


register("symmetry", "find the permutation symmetry and PE sets of a trajectory", _add_symmetry, _run_symmetry,
         render=_render_symmetry)
register("train", "train an AFF, GDML or sGDML force model and write it (.npz)", _add_train, _run_train,
         render=_render_train)
register("evaluate", "force MAE/RMSE, PCI and LCI of a model on held-out frames", _add_evaluate, _run_evaluate,
         render=_render_evaluate)
register("predict", "predict forces and their standard deviations for every frame of a file", _add_predict,
         _run_predict)

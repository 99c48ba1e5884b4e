"""The command-line interface: ``python -m aff_app COMMAND ...``.

Every command returns a JSON-ready ``dict``. With ``--json`` the human output is
suppressed and exactly one JSON object is printed, on the last line of stdout:
``{"ok": true, "command": NAME, ...result}`` or, on an expected error,
``{"ok": false, "command": NAME, "error": MESSAGE, "error_type": CLASS}``.
User errors (:class:`aff_app.errors.AFFError` and its subclasses, a path that
names no file, a bad command line) end the process with exit code 2 and a
one-line message on stderr, without a traceback. Anything else is a bug in
aff_app and is reported as one: the traceback on stderr, exit code 1, and with
``--json`` still one JSON object on the last line, with ``"bug": true``.

Commands are registered with :func:`register`, so other modules can add
theirs: list the module in :data:`COMMAND_MODULES` and call ``register`` at its
import time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from aff_app.errors import AFFError
from aff_app.io.validation import format_value

__all__ = ["Command", "register", "commands", "build_parser", "main", "add_data_arguments", "load_from_args", "CLIError",
           "add_scheduler_argument"]

#: Modules imported before the parser is built; each registers its commands.
COMMAND_MODULES: list[str] = ["aff_app.cli.model", "aff_app.cli.reproduce", "aff_app.cli.learning", "aff_app.cli.conserve",
                               "aff_app.cli.design",
                               "aff_app.cli.md"]

#: Exceptions that are the user's to fix: message, exit code 2, no traceback. Every library
#: error of that kind is an AFFError (a budget refusal, a Cholesky that failed even after jitter,
#: a bad file...); the OS errors are about paths the user gave.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    AFFError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
)

EXIT_ERROR = 2
#: Exit code of a bug (an exception that is not a user error): the interpreter's own for a traceback.
EXIT_BUG = 1


class CLIError(AFFError, RuntimeError):
    """A command-line problem (bad usage, unavailable optional part)."""


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes
    ----------
    name, help : str
    add_arguments : callable(argparse.ArgumentParser) -> None
    run : callable(argparse.Namespace) -> dict
        Does the work and returns a JSON-ready dict (no printing).
    render : callable(dict) -> str, optional
        Human-readable text for the result (default: ``key: value`` lines).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]
    render: Callable[[dict], str] | None = None


_REGISTRY: dict[str, Command] = {}


def register(
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], dict],
    *,
    render: Callable[[dict], str] | None = None,
    replace: bool = False,
) -> Command:
    """Add a subcommand; ``run(args)`` returns a JSON-ready dict.

    Raises
    ------
    ValueError
        If ``name`` is already registered (unless ``replace=True``).
    """
    if name in _REGISTRY and not replace:
        raise ValueError(f"command {name!r} is already registered")
    cmd = Command(name=name, help=help, add_arguments=add_arguments, run=run, render=render)
    _REGISTRY[name] = cmd
    return cmd


def commands() -> dict[str, Command]:
    """The registered commands (after importing :data:`COMMAND_MODULES`)."""
    for mod in COMMAND_MODULES:
        importlib.import_module(mod)
    return dict(_REGISTRY)


# -- parser ------------------------------------------------------------------------
class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are raised, so --json can report them."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise _UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The ``aff_app`` argument parser with every registered command."""
    from aff_app import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on the last stdout line")
    parser = _Parser(
        prog="python -m aff_app",
        description="Atomized force field (AFF) Gaussian-process emulator: data, training and prediction.",
        parents=[],
    )
    parser.add_argument("--version", action="version", version=f"aff_app {__version__}")
    parser.add_argument("--json", dest="json_top", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in commands().values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, parents=[common])
        cmd.add_arguments(p)
    return parser


# -- output ------------------------------------------------------------------------
def _jsonable(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _finite_only(obj: Any):
    """``obj`` with every NaN/inf float replaced by None (JSON has no NaN; a non-number must never look like one)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return _finite_only(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): _finite_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_finite_only(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite_only(obj.item())
    return obj


def _dump(obj: dict) -> str:
    # one line; ensure_ascii keeps the line safe on any terminal encoding ("Å" -> \u00c5);
    # allow_nan=False: the sanitiser has turned NaN/inf into null, so the line is always valid JSON
    return json.dumps(_finite_only(obj), default=_jsonable, ensure_ascii=True, allow_nan=False)


def _render_default(result: dict, indent: str = "") -> str:
    lines = []
    for key, val in result.items():
        if isinstance(val, dict):
            lines.append(f"{indent}{key}:")
            lines.append(_render_default(val, indent + "  "))
        elif isinstance(val, (float, np.floating)):
            lines.append(f"{indent}{key}: {format_value(val, digits=6)}")
        else:
            lines.append(f"{indent}{key}: {val}")
    return "\n".join(line for line in lines if line)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error, 1 bug, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    name = None
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except _UsageError as exc:
            raise CLIError(f"{exc} (see --help)") from None
        name = args.command
        if name is None:
            if as_json:
                raise CLIError("no command given; commands: " + ", ".join(commands()))
            parser.print_help()
            return EXIT_ERROR
        as_json = bool(getattr(args, "json", False) or args.json_top)
        args.json = as_json
        cmd = commands()[name]
        result = cmd.run(args)
    except EXPECTED_ERRORS as exc:
        message = str(exc) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        if as_json:
            print(_dump({"ok": False, "command": name, "error": message, "error_type": type(exc).__name__}))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - not the user's: a bug, reported as one
        traceback.print_exc(file=sys.stderr)
        message = f"internal error, a bug in aff_app (not your input): {type(exc).__name__}: {exc}"
        print(f"error: {message}", file=sys.stderr)
        if as_json:
            print(_dump({"ok": False, "command": name, "error": message, "error_type": type(exc).__name__,
                         "bug": True}))
        return EXIT_BUG
    if as_json:
        print(_dump({"ok": True, "command": name, **result}))
    else:
        print((cmd.render or _render_default)(result))
    return 0


# -- shared data options --------------------------------------------------------------
def add_data_arguments(parser: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """Options that select and interpret a data file (used by every data-reading command)."""
    if positional:
        parser.add_argument("data", metavar="DATA", help="trajectory file (.npz, .extxyz, .xyz, .traj, .db)")
    parser.add_argument("--format", dest="fmt", default=None, help="override the format deduced from the extension")
    parser.add_argument("--frames", default=":", help="ASE-style frame selection, e.g. ':', '::10', '-500:', '10:20:2'")
    parser.add_argument("--labels", dest="label_set", default=None, help="label set, e.g. rmd17 (default) or md17")
    parser.add_argument("--energy-key", default=None, help="info/npz key holding the energies")
    parser.add_argument("--forces-key", default=None, help="arrays/npz key holding the forces")
    parser.add_argument("--energy-unit", default=None, help="energy unit of the file (eV, kcal/mol, Hartree, ...)")
    parser.add_argument("--length-unit", default=None, help="length unit of the file (Å/Ang, bohr)")
    parser.add_argument("--drop-nonfinite", action="store_true",
                        help="drop frames with NaN/inf positions or labels instead of refusing the file")
    parser.add_argument("--drop-duplicates", action="store_true",
                        help="drop frames that repeat an earlier geometry (they make the kernel singular)")


def add_scheduler_argument(parser: argparse.ArgumentParser) -> None:
    """``--scheduler``: where independent fits run (:func:`aff_app.parallel.parse_scheduler` reads it)."""
    parser.add_argument("--scheduler", default="serial", metavar="WHERE",
                        help="where the independent fits run: 'serial' (default, this process), 'local' (a Dask "
                             "LocalCluster, one worker per core), 'local:N' (N workers) or 'tcp://host:8786' (a "
                             "running Dask scheduler); same results, in the same order")


def load_from_args(args: argparse.Namespace, path: str | None = None):
    """Load the trajectory named by :func:`add_data_arguments` options."""
    from aff_app.io.files import load_trajectory

    traj = load_trajectory(
        path if path is not None else args.data,
        fmt=args.fmt,
        frames=args.frames,
        label_set=args.label_set,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        energy_unit=args.energy_unit,
        length_unit=args.length_unit,
        nonfinite="drop" if getattr(args, "drop_nonfinite", False) else "error",
    )
    if getattr(args, "drop_duplicates", False):
        from aff_app.io.validation import drop_duplicate_frames

        traj, _ = drop_duplicate_frames(traj)
    return traj


# -- commands ------------------------------------------------------------------------
def _render_info(r: dict) -> str:
    lines = [
        f"{r['name']}  {r['formula']}: {r['n_frames']} frames x {r['n_atoms']} atoms  (source {r['source']})",
        f"units: energy {r['units']['energy']}, length {r['units']['length']}, force {r['units']['force']}"
        f"  (file: {r['original_units']['energy']}, {r['original_units']['length']})",
        f"labels: {r['label_set'] or 'none (view-only)'}; frames {r['frames']!r}",
    ]
    if "energy_min" in r:
        lines.append(f"energy range: {format_value(r['energy_min'], '', 8)} .. "
                     f"{format_value(r['energy_max'], r['units']['energy'], 8)}")
    if "max_abs_force" in r:
        lines.append(f"largest |F|: {format_value(r['max_abs_force'], r['units']['force'], 6)}")
    lines.append(f"sha256: {r['content_hash']}")
    v = r.get("validation") or {}
    for level in ("errors", "warnings", "notes"):
        tag = {"errors": "cannot train", "warnings": "warning", "notes": "note"}[level]
        lines.extend(f"{tag}: {m}" for m in v.get(level, []))
    return "\n".join(lines)


def _run_info(args) -> dict:
    from aff_app.io.validation import validate_trajectory

    traj = load_from_args(args)
    out = traj.summary()
    out["path"] = str(args.data)
    report = validate_trajectory(traj)
    out["validation"] = report.to_dict()
    out["warnings"] = list(report.errors) + list(report.warnings)
    dropped = traj.provenance.settings.get("dropped_frames")
    if dropped:
        out["dropped_frames"] = dropped
    return out


def _add_convert(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("out", metavar="OUT", help="output: .npz (sGDML), .xyz/.extxyz (extended XYZ, eV/Å), .traj or .db (ASE)")


def _written(traj, path) -> dict:
    from aff_app.io.files import detect_format

    fmt = detect_format(path)
    if fmt == "npz":
        written_units = {"energy": "kcal/mol", "length": "Å", "force": "kcal/mol/Å"}
    else:
        written_units = {"energy": "eV", "length": "Å", "force": "eV/Å"}
    return {
        "path": str(path),
        "format": "sgdml" if fmt == "npz" else fmt,
        "n_frames": traj.n_frames,
        "n_atoms": traj.n_atoms,
        "formula": traj.formula,
        "has_labels": traj.has_labels,
        "written_units": written_units,
    }


def _run_convert(args) -> dict:
    from aff_app.io.files import write_trajectory

    traj = load_from_args(args)
    path = write_trajectory(traj, args.out)
    out = _written(traj, path)
    out["source"] = traj.provenance.source
    out["label_set"] = traj.provenance.label_set
    return out


def _add_simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("molecule", metavar="MOLECULE", help="molecule name (e.g. benzene, uracil) or a label for --smiles")
    p.add_argument("--smiles", default=None, help="SMILES for molecules not in the built-in collection")
    p.add_argument("--steps", type=int, required=True, help="number of MD steps to sample")
    p.add_argument("--temperature", type=float, default=300.0, help="temperature in K (default 300)")
    p.add_argument("--timestep", type=float, default=0.5, help="time step in fs (default 0.5)")
    p.add_argument("--equilibration", type=int, default=None, help="equilibration steps before sampling")
    p.add_argument("--every", type=int, default=1, help="keep every K-th step (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output file: .npz (sGDML), .xyz/.extxyz, .traj or .db")


def _run_simulate(args) -> dict:
    from aff_app.io.files import detect_format, write_trajectory

    detect_format(args.out)  # fail before a long run, not after
    try:
        from aff_app.io.simulate import simulate_trajectory
    except ImportError as exc:
        raise CLIError(f"the simulator is not available: {exc}") from None

    def progress(fraction: float, message: str = "") -> None:
        if not args.json:
            print(f"\r{100 * fraction:5.1f}% {message}", end="", file=sys.stderr, flush=True)

    kwargs: dict[str, Any] = dict(
        smiles=args.smiles,
        steps=args.steps,
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        sample_every=args.every,
        seed=args.seed,
        progress=progress,
    )
    if args.equilibration is not None:
        kwargs["equilibration_steps"] = args.equilibration
    traj = simulate_trajectory(args.molecule, **kwargs)
    if not args.json:
        print(file=sys.stderr)
    path = write_trajectory(traj, args.out)
    out = _written(traj, path)
    out["summary"] = traj.summary()
    out["settings"] = dict(traj.provenance.settings)
    return out


register("info", "summarise a trajectory file (formula, frames, atoms, units, ranges)", add_data_arguments, _run_info,
         render=_render_info)
register("convert", "convert a trajectory file to sGDML .npz, extended XYZ or ASE .traj/.db", _add_convert, _run_convert)
register("simulate", "generate a GFN2-xTB sample trajectory and write it", _add_simulate, _run_simulate)

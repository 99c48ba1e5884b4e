"""Print the README table of bad inputs: every case is run through the loader and the CLI.

Usage::

    python scripts/bad_inputs_table.py > docs/bad_inputs.md

Each case writes one file into a temporary folder, loads it with
:func:`aff_app.io.files.load_trajectory` (then :func:`aff_app.io.validation.validate_trajectory`
when it loads) and runs ``python -m aff_app info FILE --json`` in-process; the
table shows the outcome, the CLI's exit code and the exact message. The
messages are whatever the code says today, so the table is true by construction
(``tests/test_bad_inputs.py`` checks that the committed table is current).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aff_app import cli, units  # noqa: E402
from aff_app.io import files as data
from aff_app.io.trajectory import Trajectory  # noqa: E402
from aff_app.io.validation import validate_trajectory  # noqa: E402

MD17 = ROOT.parent / "shared" / "data" / "md17"


@dataclass(frozen=True)
class Case:
    """One bad input: ``make(folder) -> path`` writes the file; ``argv`` extra CLI options."""

    key: str
    title: str
    make: Callable[[Path], Path]
    argv: tuple[str, ...] = ()


def base_trajectory(n: int = 12) -> Trajectory:
    """The first ``n`` frames of the shared uracil file (real rMD17 labels)."""
    return data.load_trajectory(MD17 / "uracil.npz", frames=f":{n}")


def _npz(folder: Path, name: str, **arrays) -> Path:
    path = folder / name
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _arrays(t: Trajectory) -> dict:
    return {"R": t.R, "z": t.z, "E": t.E, "F": t.F}


def _write(folder: Path, name: str, t: Trajectory) -> Path:
    return data.write_trajectory(t, folder / name)


def _bytes(folder: Path, name: str, b: bytes) -> Path:
    (folder / name).write_bytes(b)
    return folder / name


def _extxyz_frames(folder: Path, name: str, frames) -> Path:
    import ase.io

    ase.io.write(folder / name, frames, format="extxyz")
    return folder / name


def _mixed_counts(folder: Path) -> Path:
    from ase.build import molecule

    return _extxyz_frames(folder, "mixed_sizes.extxyz", [molecule("H2O"), molecule("H2O"), molecule("NH3")])


def _mixed_order(folder: Path) -> Path:
    from ase.build import molecule

    a = molecule("CH3OH")
    b = a[[1, 0, 2, 3, 4, 5]]
    return _extxyz_frames(folder, "reordered.extxyz", [a, a.copy(), b])


def _crc(folder: Path) -> Path:
    b = bytearray(_write(folder, "tmp_ok.npz", base_trajectory()).read_bytes())
    i = b.find(b"F.npy")  # damage the bytes of the forces member (its CRC no longer matches)
    for k in range(i + 200, i + 260):
        b[k] ^= 0x5A
    return _bytes(folder, "corrupt.npz", bytes(b))


def _truncated(folder: Path, ext: str) -> Path:
    b = _write(folder, f"tmp_ok.{ext}", base_trajectory()).read_bytes()
    cut = len(b) // 2 + 150  # mid-frame (half of an even number of equal frames is a frame boundary)
    return _bytes(folder, f"truncated.{ext}", b[:cut])


def _sqlite(folder: Path) -> Path:
    path = folder / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE results (x REAL)")
    con.commit()
    con.close()
    return path


def _pickled(folder: Path) -> Path:
    t = base_trajectory()
    return _npz(folder, "pickled.npz", R=t.R, z=t.z, E=t.E, F=np.array([{"forces": 1}], dtype=object))


def _nan_forces(folder: Path, name: str = "nan_forces.npz") -> Path:
    t = base_trajectory()
    F = t.F.copy()
    F[4, 7, 1] = np.nan
    return _npz(folder, name, **{**_arrays(t), "F": F})


def _inf_energy(folder: Path) -> Path:
    t = base_trajectory()
    E = t.E.copy()
    E[9] = np.inf
    return _npz(folder, "inf_energy.npz", **{**_arrays(t), "E": E})


def _missing_forces(folder: Path) -> Path:
    t = base_trajectory()
    return _npz(folder, "no_forces.npz", R=t.R, z=t.z, E=t.E)


def _duplicates(folder: Path) -> Path:
    t = base_trajectory()
    idx = [0, 1, 2, 3, 1, 4, 5, 6, 1, 7]
    return _npz(folder, "duplicates.npz", R=t.R[idx], z=t.z, E=t.E[idx], F=t.F[idx])


def _ev_energies(folder: Path) -> Path:
    t = data.load_trajectory(MD17 / "uracil.npz", frames=":400")
    return _npz(folder, "energy_in_eV.npz", R=t.R, z=t.z, E=t.E * units.energy_factor("kcal/mol", "eV"), F=t.F)


def _kcal_as_ev(folder: Path) -> Path:
    """The numbers of an MD17 file (kcal/mol) in an extxyz without unit metadata: ASE's default is eV."""
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    t = data.load_trajectory(MD17 / "uracil.npz", frames=":400")
    images = []
    for R, E, F in zip(t.R, t.E, t.F):
        atoms = ase.Atoms(numbers=t.z, positions=R)
        atoms.calc = SinglePointCalculator(atoms, energy=float(E), forces=F)
        images.append(atoms)
    path = folder / "kcal_no_units.extxyz"
    ase.io.write(path, images, format="extxyz")
    return path


def _gradients(folder: Path) -> Path:
    t = data.load_trajectory(MD17 / "uracil.npz", frames=":400")
    return _npz(folder, "gradients.npz", R=t.R, z=t.z, E=t.E, F=-t.F)


def _big_molecule(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 240
    R = rng.uniform(0, 20, size=(3, n, 3))
    return _npz(folder, "big.npz", R=R, z=np.full(n, 6), E=rng.normal(size=3), F=rng.normal(size=(3, n, 3)))


def _bad_element(folder: Path) -> Path:
    t = base_trajectory()
    z = t.z.copy()
    z[3] = 150
    return _npz(folder, "element150.npz", **{**_arrays(t), "z": z})


def _shape_mismatch(folder: Path) -> Path:
    t = base_trajectory()
    return _npz(folder, "short_z.npz", **{**_arrays(t), "z": t.z[:-1]})


def _text_R(folder: Path) -> Path:
    t = base_trajectory()
    return _npz(folder, "text_R.npz", **{**_arrays(t), "R": t.R.astype(str)})


def _unknown_unit(folder: Path) -> Path:
    t = base_trajectory()
    return _npz(folder, "furlong.npz", **_arrays(t), e_unit=np.array("furlong"))


def _too_big(folder: Path) -> Path:
    # a real file just above the upload limit; loaded as an upload (bytes), as the app does
    path = folder / "huge.npz"
    with open(path, "wb") as fh:
        fh.truncate(data.MAX_UPLOAD_MB * 2**20 + 1)
    return path


CASES: list[Case] = [
    Case("empty", "empty file (`empty.npz`, 0 bytes)", lambda d: _bytes(d, "empty.npz", b"")),
    Case("junk", "binary junk named `.xyz`",
         lambda d: _bytes(d, "junk.xyz", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())),
    Case("npz_as_xyz", "an `.npz` named `.xyz`",
         lambda d: _bytes(d, "data.xyz", _write(d, "tmp_ok.npz", base_trajectory()).read_bytes())),
    Case("xyz_as_npz", "an extended XYZ named `.npz`",
         lambda d: _bytes(d, "data.npz", _write(d, "tmp_ok.extxyz", base_trajectory()).read_bytes())),
    Case("db_as_traj", "an ASE `.db` named `.traj`",
         lambda d: _bytes(d, "data.traj", _write(d, "tmp_ok.db", base_trajectory()).read_bytes())),
    Case("npy", "a single `.npy` array named `.npz`",
         lambda d: (np.save(d / "R.npy", base_trajectory().R), _bytes(d, "array.npz", (d / "R.npy").read_bytes()))[1]),
    Case("gzip", "a gzip-compressed extended XYZ",
         lambda d: _bytes(d, "data.extxyz", gzip.compress(_write(d, "tmp_ok.extxyz", base_trajectory()).read_bytes()))),
    Case("trunc_npz", "truncated `.npz` (cut in the middle)", lambda d: _truncated(d, "npz")),
    Case("crc_npz", "corrupted `.npz` (bytes of `F` flipped)", _crc),
    Case("trunc_traj", "truncated ASE `.traj`", lambda d: _truncated(d, "traj")),
    Case("trunc_db", "truncated ASE `.db`", lambda d: _truncated(d, "db")),
    Case("sqlite", "an SQLite file that is no ASE database", _sqlite),
    Case("trunc_xyz", "truncated extended XYZ", lambda d: _truncated(d, "extxyz")),
    Case("pickle", "`.npz` holding a pickled object array", _pickled),
    Case("no_forces", "`.npz` with `R`, `z`, `E` but no `F`", _missing_forces),
    Case("no_labels", "plain XYZ (positions only)", lambda d: _write(d, "positions.xyz",
                                                                     dataclasses.replace(base_trajectory(), E=None, F=None))),
    Case("mixed_sizes", "frames with different atom counts (H2O, H2O, NH3)", _mixed_counts),
    Case("reordered", "a frame with the atoms in a different order", _mixed_order),
    Case("shape", "`z` with one atom fewer than `R`", _shape_mismatch),
    Case("text_R", "`R` stored as strings", _text_R),
    Case("element", "atomic number 150", _bad_element),
    Case("nan", "NaN in one force component", _nan_forces),
    Case("inf", "an infinite energy", _inf_energy),
    Case("nan_drop", "NaN in one force, loaded with `--drop-nonfinite`",
         lambda d: _nan_forces(d, "nan_dropped.npz"), ("--drop-nonfinite",)),
    Case("single", "a single frame (`--frames 0`)",
         lambda d: _write(d, "one.npz", base_trajectory()), ("--frames", "0")),
    Case("duplicates", "duplicate frames (frame 1 three times)", _duplicates),
    Case("ev", "energies written in eV, forces in kcal/mol/Å (uracil, 400 frames)", _ev_energies),
    Case("kcal_as_ev", "extxyz in kcal/mol without unit metadata (read as eV)", _kcal_as_ev),
    Case("gradients", "gradients stored as forces (sign flipped)", _gradients),
    Case("big", "240 atoms", _big_molecule),
    Case("unit", "`e_unit = 'furlong'`", _unknown_unit),
    Case("frames", "frame selection out of range (`--frames 500`)",
         lambda d: _write(d, "short.npz", base_trajectory()), ("--frames", "500")),
    Case("extension", "unsupported extension (`.pdb`)", lambda d: _bytes(d, "model.pdb", b"ATOM\n")),
    Case("too_big", f"an upload above the {data.MAX_UPLOAD_MB} MB limit", _too_big),
]


@dataclass
class Outcome:
    """What the loader and the CLI made of one case."""

    key: str
    title: str
    loaded: bool
    error_type: str | None
    message: str  # the error, or the report's errors and warnings joined
    report_errors: list
    report_warnings: list
    report_notes: list
    cli_code: int | None  # None: not a CLI case (upload limit)
    cli_json: dict


def _load(path: Path, argv: tuple[str, ...]):
    kw: dict = {}
    it = iter(argv)
    for a in it:
        if a == "--frames":
            kw["frames"] = next(it)
        elif a == "--drop-nonfinite":
            kw["nonfinite"] = "drop"
    if path.name == "huge.npz":  # as an upload: bytes with a filename
        return data.load_trajectory(path.read_bytes(), filename=path.name, **kw)
    return data.load_trajectory(path, **kw)


def run_case(case: Case, folder: Path) -> Outcome:
    path = case.make(folder)
    try:
        traj = _load(path, case.argv)
    except (data.DataError, units.UnitError) as exc:
        loaded, etype, message, rep = False, type(exc).__name__, str(exc), None
    else:
        rep = validate_trajectory(traj)
        loaded, etype = True, None
        message = " / ".join(rep.errors + rep.warnings + rep.notes)
    out, err = io.StringIO(), io.StringIO()
    if path.name == "huge.npz":  # an upload limit: the CLI reads from disk, where it does not apply
        code, lines = None, []
    else:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["info", str(path), "--json", *case.argv])
        lines = out.getvalue().strip().splitlines()
    return Outcome(case.key, case.title, loaded, etype, message,
                   list(rep.errors) if rep else [], list(rep.warnings) if rep else [],
                   list(rep.notes) if rep else [], code, json.loads(lines[-1]) if lines else {})


def run_all(folder: Path | None = None) -> list[Outcome]:
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aff_bad_")))
        return [run_case(c, folder) for c in CASES]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(outcomes: list[Outcome]) -> str:
    lines = [
        "# Bad inputs and the messages they get",
        "",
        "Generated by `python scripts/bad_inputs_table.py > docs/bad_inputs.md` (every case is run through",
        "`aff_app.io.files.load_trajectory`, `aff_app.io.validation.validate_trajectory` and `python -m aff_app info",
        "FILE --json`; `tests/test_bad_inputs.py` checks that this file is current). *Refused*: the loader",
        "raises the error class shown and the CLI exits with code 2, printing the same message. *Loads*: the",
        "file loads and the report lists what blocks training (✗), warnings (⚠) and notes (ℹ).",
        "",
        "| # | input | outcome | CLI exit | message |",
        "|---|---|---|---|---|",
    ]
    for i, o in enumerate(outcomes, 1):
        if o.loaded:
            outcome = "loads" + (" (cannot train)" if o.report_errors else "")
            msg = " ".join([f"✗ {m}" for m in o.report_errors] + [f"⚠ {m}" for m in o.report_warnings]
                           + [f"ℹ {m}" for m in o.report_notes])
        else:
            outcome = f"refused: `{o.error_type}`"
            msg = o.message
        code = "— (uploads only)" if o.cli_code is None else str(o.cli_code)
        lines.append(f"| {i} | {_cell(o.title)} | {outcome} | {code} | {_cell(msg)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown(run_all()))

"""Issue 6: every bad input gets a specific message, in the library and through the CLI.

The catalogue of bad files lives in ``scripts/bad_inputs_table.py`` (it also
prints ``docs/bad_inputs.md``); here each case's outcome is checked against what
it must say, the committed table against the code, and the numerical checks
(duplicates, unit consistency, non-finite values, JSON output, model files)
against cases built by hand.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import units as aseu

from aff_app import cli, units
from aff_app.io import files as data
from aff_app.io import formats, npz
from aff_app.io.files import DataError, load_trajectory
from aff_app.gp.force import ForceModel, ModelError, fit_force_model
from aff_app.io.trajectory import Trajectory
from aff_app.io.validation import (
    check_label_scale,
    with_energy_unit,
    MAX_ATOMS,
    UNIT_RATIO_TOLERANCE,
    check_unit_consistency,
    drop_duplicate_frames,
    drop_nonfinite_frames,
    find_duplicate_frames,
    format_value,
    validate_trajectory,
)

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("bad_inputs_table", ROOT / "scripts" / "bad_inputs_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bad_inputs_table"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def table(tmp_path_factory, shared_data):
    mod = _script()
    outcomes = mod.run_all(tmp_path_factory.mktemp("bad"))
    return mod, {o.key: o for o in outcomes}, outcomes


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


# What each case must produce: (error class, or None when it loads) and a pattern its message must match.
EXPECTED = {
    "empty": ("EmptyFileError", r"'empty.npz' is empty \(0 bytes\)"),
    "junk": ("WrongFormatError", r"'junk.xyz' is not an extended XYZ text file: it holds binary data"),
    "npz_as_xyz": ("WrongFormatError", r"holds a zip archive.*Rename it to \.npz.*--format npz"),
    "xyz_as_npz": ("WrongFormatError", r"holds text \(extended XYZ\?\).*--format extxyz"),
    "db_as_traj": ("WrongFormatError", r"holds an SQLite database.*--format db"),
    "npy": ("WrongFormatError", r"single \.npy array"),
    "gzip": ("WrongFormatError", r"gzip-compressed: decompress it"),
    "trunc_npz": ("CorruptFileError", r"'truncated.npz' is a damaged \.npz archive"),
    "crc_npz": ("CorruptFileError", r"damaged \.npz archive \(key 'F'\).*CRC"),
    "trunc_traj": ("CorruptFileError", r"'truncated.traj' could not be read as an ASE trajectory.*truncated or damaged"),
    "trunc_db": ("CorruptFileError", r"'truncated.db' could not be read as an ASE database.*truncated or damaged"),
    "sqlite": ("WrongFormatError", r"SQLite database but not an ASE database.*tables: results"),
    "trunc_xyz": ("CorruptFileError", r"'truncated.extxyz'.*(truncated|Frame has)"),
    "pickle": ("PickledDataError", r"key 'F' of 'pickled.npz' holds pickled Python objects; refused"),
    "no_forces": (None, r"has no forces: it loads for viewing only"),
    "no_labels": (None, r"has no energies and no forces: it loads for viewing only"),
    "mixed_sizes": ("DataError", r"frame 2 has atoms H3N \(4 atoms\) but frame 0 has H2O \(3 atoms\)"),
    "reordered": ("DataError", r"frame 2 has its atoms in a different order.*atom 0 is O in frame 2 but C in frame 0"),
    "shape": ("DataError", r"N = 11 atoms \(the length of 'z'\), got \(12, 12, 3\)"),
    "text_R": ("DataError", r"key 'R' of 'text_R.npz' must hold real numbers, got dtype <U"),
    "element": ("DataError", r"atomic numbers must lie in 1\.\.118, got range 1\.\.150"),
    "nan": ("NonFiniteDataError", r"1 in forces, in 1 of 12 frames; first at frame 4, atom 7 \(O\).*--drop-nonfinite"),
    "inf": ("NonFiniteDataError", r"1 in energies.*frame 9: energy E\[9\] = inf"),
    "nan_drop": (None, r"1 frame\(s\) were dropped at load time \(nonfinite\)"),
    "single": (None, r"has 1 frame; training needs at least 2"),
    "duplicates": (None, r"2 duplicate frame\(s\) in 1 group\(s\).*frames 1, 4, 8.*singular"),
    "ev": (None, r"disagree.*expected with energies in eV, forces in kcal/mol/Å"),
    "kcal_as_ev": (None, r"implausibly large.*eV was assumed.*Read in kcal/mol they would be"),
    "gradients": (None, r"disagree in sign.*gradients"),
    "big": (None, rf"N = 240 atoms, above the {MAX_ATOMS}"),
    "unit": ("UnitError", r"'furlong.npz': unknown energy unit 'furlong'"),
    "frames": ("FrameSelectionError", r"frame 500 is out of range: 'short.npz' has 12 frames"),
    "extension": ("UnsupportedFormatError", r"'model.pdb'.*supported extensions"),
    "too_big": ("UploadTooLargeError", rf"above the {data.MAX_UPLOAD_MB} MB limit"),
}


def test_every_case_has_an_expectation(table):
    mod, _, _ = table
    assert [c.key for c in mod.CASES] == list(EXPECTED)


@pytest.mark.parametrize("key", list(EXPECTED))
def test_case_outcome_and_cli(table, key):
    _, by_key, _ = table
    o = by_key[key]
    etype, pattern = EXPECTED[key]
    if etype is None:
        assert o.loaded and o.error_type is None
        assert pytest.importorskip("re").search(pattern, o.message), o.message
        assert o.cli_code == 0 and o.cli_json["ok"] is True
        v = o.cli_json["validation"]
        assert v["errors"] == o.report_errors and v["warnings"] == o.report_warnings
        assert v["trainable"] is (not o.report_errors)
    else:
        assert not o.loaded and o.error_type == etype, (o.error_type, o.message)
        assert pytest.importorskip("re").search(pattern, o.message), o.message
        if key == "too_big":  # the CLI reads from disk, where no upload limit applies
            assert o.cli_code is None
        else:
            assert o.cli_code == 2
            assert o.cli_json == {"ok": False, "command": "info", "error": o.message, "error_type": etype}
    assert "Traceback" not in o.message


def test_committed_table_is_current(table):
    mod, _, outcomes = table
    assert (ROOT / "docs" / "bad_inputs.md").read_text(encoding="utf-8") == mod.markdown(outcomes), (
        "docs/bad_inputs.md is stale: run python scripts/bad_inputs_table.py > docs/bad_inputs.md"
    )


@pytest.mark.parametrize("key", ["empty", "pickle", "nan"])
def test_cli_subprocess_bad_file_exit_2_json(repo_root, tmp_path, key, shared_data):
    mod = _script()
    case = next(c for c in mod.CASES if c.key == key)
    path = case.make(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "aff_app", "info", str(path), "--json"], cwd=repo_root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    out = _last_json(proc.stdout)
    assert out["ok"] is False and out["error_type"] == EXPECTED[key][0]
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


# -- loaders: limits and safety ---------------------------------------------------------
def test_upload_limit_for_bytes_and_file_objects(monkeypatch):
    monkeypatch.setattr(formats, "MAX_UPLOAD_MB", 1)
    blob = b"PK\x03\x04" + bytes(2**20)
    with pytest.raises(data.UploadTooLargeError, match=r"'big.npz' is 1.0 MB \(1048580 bytes\), above the 1 MB limit"):
        load_trajectory(blob, filename="big.npz")

    class Upload(io.BytesIO):
        name = "big.npz"
        size = 3 * 2**20

    with pytest.raises(data.UploadTooLargeError, match=r"3.0 MB \(3145728 bytes\), above the 1 MB limit"):
        load_trajectory(Upload(b"x"))  # refused from its declared size, before reading


def test_zip_bomb_limit(monkeypatch, tmp_path, shared_data):
    path = load_trajectory(shared_data / "uracil.npz", frames=":50")
    f = data.write_sgdml_npz(path, tmp_path / "u.npz")
    monkeypatch.setattr(npz, "MAX_NPZ_UNCOMPRESSED_MB", 0.01)
    with pytest.raises(DataError, match=r"would decompress to .* GB, above the"):
        load_trajectory(f)


def test_db_file_is_never_written_to(tmp_path, table):
    mod, _, _ = table
    path = mod._sqlite(tmp_path)
    before = path.read_bytes()
    with pytest.raises(data.WrongFormatError):
        load_trajectory(path)
    assert path.read_bytes() == before  # ASE would have added its tables to the user's file


def test_sniff_format():
    assert data.sniff_format(b"") == "empty"
    assert data.sniff_format(b"3\nProperties=species:S:1:pos:R:3\nH 0 0 0\n") == "text"
    assert data.sniff_format(b"SQLite format 3\x00" + bytes(100)) == "db"
    assert data.sniff_format(b"- of UlmASE-Trajectory") == "traj"
    assert data.sniff_format(b"\x00\x01\x02\xff") == "binary"
    assert data.sniff_format("Å é".encode() * 2000) == "text"  # multi-byte characters across the 4 KiB edge


def test_nonfinite_drop_keeps_the_rest_and_records_them(tmp_path, shared_data):
    t = load_trajectory(shared_data / "uracil.npz", frames=":20")
    R = t.R.copy()
    R[3, 0, 0] = np.inf
    F = t.F.copy()
    F[11, 2, 2] = np.nan
    path = tmp_path / "holes.npz"
    np.savez(path, R=R, z=t.z, E=t.E, F=F, idx=np.arange(100, 120))
    with pytest.raises(data.NonFiniteDataError, match=r"in 2 of 20 frames; first at frame 3, atom 0 \(C\): positions"):
        load_trajectory(path)
    d = load_trajectory(path, nonfinite="drop")
    assert d.n_frames == 18 and np.all(np.isfinite(d.F)) and np.all(np.isfinite(d.R))
    assert d.provenance.settings["dropped_frames"] == {"nonfinite": [3, 11]}
    assert 103 not in d.provenance.settings["idx"] and len(d.provenance.settings["idx"]) == 18
    # the same through validation on an in-memory trajectory
    raw = Trajectory(z=t.z, R=R, E=t.E, F=F)
    rep = validate_trajectory(raw)
    assert rep.nonfinite_frames == [3, 11] and not rep.trainable
    kept, n = drop_nonfinite_frames(raw)
    assert n == 2 and kept.n_frames == 18
    with pytest.raises(DataError, match="every one of the 1 frames"):
        drop_nonfinite_frames(raw.subset([3]))


def test_single_frame_refused_at_training_with_a_message(shared_data, tmp_path, capsys):
    from aff_app.workflows.pipeline import train_model
    from aff_app.workflows.training import SplitError

    one = load_trajectory(shared_data / "uracil.npz", frames="0")
    with pytest.raises(SplitError, match=r"1"):
        train_model(one, n_train=2)
    code = cli.main(["train", str(shared_data / "uracil.npz"), "--frames", "0", "--n-train", "1",
                     "--out", str(tmp_path / "m.npz"), "--json"])
    out = _last_json(capsys.readouterr().out)
    assert code == 2 and out["ok"] is False and "at least 2" in out["error"]


# -- duplicates ------------------------------------------------------------------------
def _rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_duplicates_found_up_to_rigid_motion(shared_data):
    t = load_trajectory(shared_data / "ethanol.npz", frames=":30")
    R = t.R.copy()
    R[17] = R[5] @ _rotation(1).T + np.array([3.0, -1.0, 2.0])  # same geometry, moved: same kernel row
    R[25] = R[5]
    R[9] = R[2]
    R[20] = R[2] + 1e-6  # translated by a tiny vector: still the same distances
    R[28] = R[3].copy()
    R[28, 0, 0] += 1e-3  # a real (small) change: not a duplicate
    groups = find_duplicate_frames(R)
    assert groups == [[2, 9, 20], [5, 17, 25]]
    traj = dataclasses.replace(t, R=R)
    kept, n = drop_duplicate_frames(traj)
    assert n == 4 and kept.n_frames == 26
    assert kept.provenance.settings["dropped_frames"] == {"duplicate": [9, 17, 20, 25]}
    assert find_duplicate_frames(kept.R) == []
    np.testing.assert_array_equal(kept.R[2], R[2])  # the first of each group stays


def test_duplicates_none_in_real_data_and_edge_sizes(shared_data):
    t = load_trajectory(shared_data / "uracil.npz")
    assert find_duplicate_frames(t.R) == []
    assert find_duplicate_frames(np.zeros((1, 3, 3))) == []
    assert find_duplicate_frames(np.zeros((4, 1, 3))) == [[0, 1, 2, 3]]  # one atom: positions compared
    with pytest.raises(DataError, match=r"shape \(M, N, 3\)"):
        find_duplicate_frames(np.zeros((4, 3)))


def test_cli_drop_duplicates(table, tmp_path, capsys):
    mod, _, _ = table
    path = mod._duplicates(tmp_path)
    assert cli.main(["info", str(path), "--json", "--drop-duplicates"]) == 0
    out = _last_json(capsys.readouterr().out)
    assert out["n_frames"] == 8 and out["validation"]["n_duplicates"] == 0
    assert out["dropped_frames"] == {"duplicate": [4, 8]}


# -- unit consistency ------------------------------------------------------------------
MOLECULES = ["uracil", "benzene", "naphthalene", "aspirin", "ethanol", "malonaldehyde", "toluene", "salicylic"]


@pytest.mark.parametrize("mol", MOLECULES)
def test_md17_energies_and_forces_agree(shared_data, mol):
    """rMD17 and MD17 labels are both kcal/mol and kcal/mol/Å: ΔE ≈ −½(F_a+F_b)·ΔR on close frames."""
    for labels in ("rmd17", "md17"):
        t = load_trajectory(shared_data / f"{mol}.npz", label_set=labels)
        chk = check_unit_consistency(t)
        assert chk.consistent is True, chk.message
        assert abs(chk.ratio - 1) < UNIT_RATIO_TOLERANCE and chk.n_pairs >= 20 and chk.residual < 0.2


@pytest.mark.parametrize(
    "e_unit, f_unit, expected, likely",
    [
        # ρ = ΔE / (−F·ΔR) = [energy unit of F] / [unit of E] × Å / [length unit of F]
        ("eV", ("kcal/mol", "Å"), aseu.kcal / aseu.mol, "energies in eV, forces in kcal/mol/Å"),
        ("kcal/mol", ("eV", "Å"), aseu.mol / aseu.kcal, "energies in kcal/mol, forces in eV/Å"),
        ("kJ/mol", ("kcal/mol", "Å"), 4.184, "energies in kJ/mol, forces in kcal/mol/Å"),
        ("Hartree", ("kcal/mol", "Å"), 1 / 627.509, "energies in Hartree, forces in kcal/mol/Å"),
        ("kcal/mol", ("kcal/mol", "bohr"), 1 / aseu.Bohr, "forces per bohr but positions in Å"),
        ("kcal/mol", ("Hartree", "bohr"), 627.509 / aseu.Bohr,
         "energies in kcal/mol, forces in Hartree/bohr, positions in Å"),
    ],
)
def test_unit_mismatch_is_named(shared_data, e_unit, f_unit, expected, likely):
    """Energies written in one unit and forces in another, both read as kcal/mol(/Å)."""
    t = load_trajectory(shared_data / "uracil.npz", frames=":600")
    E = t.E * units.energy_factor("kcal/mol", e_unit)
    F = t.F * units.force_factor("kcal/mol", "Å", *f_unit)
    chk = check_unit_consistency(dataclasses.replace(t, E=E, F=F))
    assert chk.consistent is False and chk.likely == likely, chk.message
    assert chk.ratio == pytest.approx(expected, rel=0.03)


def test_unit_check_written_file_in_ev_and_kcal(shared_data, tmp_path):
    """A file whose energies were written in eV and forces in kcal/mol/Å: the report warns, naming both."""
    t = load_trajectory(shared_data / "aspirin.npz", frames=":500")
    path = tmp_path / "mixed.npz"
    np.savez(path, R=t.R, z=t.z, E=t.E * units.energy_factor("kcal/mol", "eV"), F=t.F)
    rep = validate_trajectory(load_trajectory(path))
    assert rep.trainable and rep.unit_check.consistent is False
    assert any("energies in eV, forces in kcal/mol/Å" in w for w in rep.warnings)


def test_unit_check_shuffled_frames_and_inconclusive_cases(shared_data):
    t = load_trajectory(shared_data / "uracil.npz")
    shuffled = t.subset(np.random.default_rng(3).permutation(t.n_frames))
    assert check_unit_consistency(shuffled).consistent is True  # nearest neighbours stand in for consecutive frames
    few = load_trajectory(shared_data / "uracil.npz", frames="::500")  # 10 frames far apart
    chk = check_unit_consistency(few)
    assert chk.consistent is None and "skipped" in chk.message
    noise = dataclasses.replace(t, E=np.random.default_rng(0).normal(size=t.n_frames))
    chk = check_unit_consistency(noise)
    assert chk.consistent is None and "inconclusive" in chk.message
    assert check_unit_consistency(dataclasses.replace(t, E=None, F=None)).consistent is None


# -- label scale (issue 20 item 2) -----------------------------------------------------------
def _extxyz_without_units(t, path, frames=80):
    """An extxyz with the numbers of ``t`` (kcal/mol, kcal/mol/Å) and no unit metadata: ASE reads it as eV."""
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    images = []
    for i in range(frames):
        a = ase.Atoms(numbers=t.z, positions=t.R[i])
        a.calc = SinglePointCalculator(a, energy=float(t.E[i]), forces=t.F[i])
        images.append(a)
    ase.io.write(path, images, format="extxyz")
    return path


@pytest.mark.parametrize("mol", MOLECULES)
def test_label_scale_of_real_md_is_plausible(shared_data, mol):
    """MD17 at 500 K: RMS force components 21–32 kcal/mol/Å, energy spread of a ~600 K trajectory."""
    chk = check_label_scale(load_trajectory(shared_data / f"{mol}.npz"))
    assert chk.plausible is True, chk.message
    assert 15 < chk.rms_force < 40 and 250 < chk.temperature < 800, chk


def test_kcal_file_read_as_ev_is_caught_in_report_cli_and_training(shared_data, tmp_path, capsys):
    """The issue's case: an extxyz in kcal/mol without unit metadata. The ΔE/(−F·ΔR) check passes (a common
    factor), the scale check names kcal/mol, and reading it so gives back the original numbers."""
    t = load_trajectory(shared_data / "uracil.npz", frames=":400")
    path = _extxyz_without_units(t, tmp_path / "uracil_kcal.extxyz")
    read = load_trajectory(path)
    assert read.provenance.energy_unit == "eV" and read.provenance.energy_unit_source == "default"
    rep = validate_trajectory(read)
    assert rep.unit_check.consistent is True  # blind to the common factor
    chk = rep.scale_check
    assert chk.plausible is False and chk.likely_unit == "kcal/mol"
    assert chk.rms_force == pytest.approx(np.sqrt(np.mean(t.F[:80] ** 2)) * units.energy_factor("eV"), rel=1e-6)
    warning = next(w for w in rep.warnings if "implausibly large" in w)
    assert "no energy unit, so eV was assumed" in warning and "--energy-unit 'kcal/mol'" in warning
    fixed = with_energy_unit(read, "kcal/mol")
    assert np.allclose(fixed.E, t.E[:80], rtol=1e-12) and np.allclose(fixed.F, t.F[:80], rtol=1e-12)
    assert fixed.provenance.energy_unit == "kcal/mol" and check_label_scale(fixed).plausible is True
    # the CLI says it with `info`, and `--energy-unit` makes it go away
    assert cli.main(["info", str(path), "--json"]) == 0
    out = _last_json(capsys.readouterr().out)
    assert out["validation"]["scale_check"]["likely_unit"] == "kcal/mol"
    assert any("implausibly large" in w for w in out["warnings"])
    assert cli.main(["info", str(path), "--energy-unit", "kcal/mol", "--json"]) == 0
    out = _last_json(capsys.readouterr().out)
    assert out["validation"]["scale_check"]["plausible"] is True and not out["warnings"]
    # a model trained on the mis-read file carries the warning too
    from aff_app.workflows import pipeline

    trained = pipeline.fit(read, np.arange(0, 60, 3), settings=pipeline.TrainSettings(gamma=0.1, lam=1e-6,
                                                                                        energy=False))
    assert any("implausibly large" in w for w in trained.warnings)


def test_label_scale_small_and_unexplained(shared_data):
    """An eV file read as kcal/mol is implausibly small (named: eV); a scale no unit explains is said so."""
    t = load_trajectory(shared_data / "benzene.npz", frames=":300")
    small = dataclasses.replace(t, E=t.E * units.energy_factor("kcal/mol", "eV"),
                                F=t.F * units.energy_factor("kcal/mol", "eV"))
    chk = check_label_scale(small)
    assert chk.plausible is False and chk.likely_unit == "eV" and "implausibly small" in chk.message
    odd = dataclasses.replace(t, E=t.E * 1e4, F=t.F * 1e4)
    chk = check_label_scale(odd)
    assert chk.plausible is False and chk.likely_unit is None and "No supported energy unit" in chk.message
    assert check_label_scale(dataclasses.replace(t, E=None, F=None)).plausible is None
    forces_only = check_label_scale(dataclasses.replace(t, E=None))
    assert forces_only.plausible is True and forces_only.temperature is None


# -- numbers on display ------------------------------------------------------------------
def test_format_value():
    assert format_value(float("nan"), "kcal/mol") == "—"
    assert format_value(np.inf) == "—" and format_value(-np.inf, "Å") == "—"
    assert format_value(None) == "—" and format_value("abc") == "—"
    assert format_value(np.float32(1.23456), "kcal/mol/Å", 3) == "1.23 kcal/mol/Å"
    assert format_value(-0.000123456, digits=2) == "-0.00012"
    assert format_value(5) == "5"


def test_cli_json_never_holds_nan(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_REGISTRY", dict(cli._REGISTRY))
    cli.register("nans", "returns non-finite numbers", lambda p: None,
                 lambda a: {"mae": float("nan"), "arr": np.array([1.0, np.inf]), "nested": {"x": np.float64(-np.inf)},
                            "ok_value": 2.5})
    assert cli.main(["nans", "--json"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"ok": True, "command": "nans", "mae": None, "arr": [1.0, None],
                                "nested": {"x": None}, "ok_value": 2.5}
    assert cli.main(["nans"]) == 0
    text = capsys.readouterr().out
    assert "mae: —" in text and "nan" not in text.lower().replace("nans", "")


def test_search_not_converged_warning():
    from aff_app.gp.record import SearchRecord

    hyper = {"converged": False, "history": [[0.1, 1e-6, -5.0], [0.3, 1e-6, -3.0], [0.9, 1e-7, -1.0]]}
    w = SearchRecord.from_dict(hyper).edge_warning(0.9, 1e-7)
    assert "did not converge" in w and "high end" in w and "γ = 0.9" in w
    w = SearchRecord.from_dict(hyper).edge_warning(0.3, 0.1)  # γ inside: the λ grid's top is the edge left
    assert "λ at the top of its grid" in w
    assert SearchRecord.from_dict({"converged": True}).edge_warning(0.3, 1e-6) is None
    assert SearchRecord(fixed=True).edge_warning(0.3, 1e-6) is None


def test_train_reports_convergence(shared_data, tmp_path, capsys):
    code = cli.main(["train", str(shared_data / "ethanol.npz"), "--frames", ":40", "--model", "gdml",
                     "--n-train", "6", "--out", str(tmp_path / "m.npz"), "--json"])
    out = _last_json(capsys.readouterr().out)
    assert code == 0 and isinstance(out["converged"], bool)
    assert bool(out["warnings"]) is (out["converged"] is False)
    # the CLI says what to do about it
    assert all("--gamma/--lam" in w for w in out["warnings"] if "did not converge" in w)


# -- model files -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory, shared_data):
    t = load_trajectory(shared_data / "uracil.npz", frames=":4")
    m = fit_force_model(t.R, t.F, t.z, mode="gdml", gamma=0.5, lam=1e-6)
    path = tmp_path_factory.mktemp("model") / "m.npz"
    m.save(path)
    return path


def _resave(src: Path, dest: Path, **changes) -> Path:
    with np.load(src) as d:
        arrays = {k: d[k] for k in d.files}
    arrays.update(changes)
    for k, v in list(arrays.items()):
        if v is None:
            del arrays[k]
    with open(dest, "wb") as fh:
        np.savez(fh, **arrays)
    return dest


def test_model_file_damage_is_a_model_error(model_file, tmp_path):
    b = model_file.read_bytes()
    cases = {
        "truncated.npz": b[: len(b) // 2],
        "empty.npz": b"",
        "corrupt.npz": (lambda x: bytes(x[:200]) + bytes(v ^ 0x33 for v in x[200:300]) + bytes(x[300:]))(bytearray(b)),
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelError, match="not an .npz archive of plain arrays, or it is truncated or damaged"):
            ForceModel.load(tmp_path / name)
    assert ForceModel.load(model_file).n_train == 4


def test_model_file_wrong_shapes_and_versions(model_file, tmp_path):
    with np.load(model_file) as d:
        R, alpha, z = d["R_train"], d["alpha"], d["z"]
    bad = {
        "R_train": (dict(R_train=R[:, :-1]), r"R_train \(4, 11, 3\) / F_train \(4, 12, 3\) do not match 12 atoms"),
        "alpha": (dict(alpha=alpha[:-3]), r"alpha has 141 values, expected 3·M·N = 144"),
        "z": (dict(z=np.array(["C"] * z.size)), r"malformed model data \(ValueError"),
        "future": (dict(format=np.array("aff_app.ForceModel/7"), version=np.array("9.0.0")),
                   r"written by aff_app 9.0.0 in format 'aff_app.ForceModel/7', newer than.*upgrade aff_app"),
        "other": (dict(format=np.array("sgdml")), r"expected model format 'aff_app.ForceModel/1', found 'sgdml'"),
        "missing": (dict(alpha=None), r"missing keys \['alpha'\]"),
        "pickled": (dict(info=np.array([{"code": "print(1)"}], dtype=object)), r"pickled \(object\) data, which is refused"),
    }
    for name, (changes, pattern) in bad.items():
        path = _resave(model_file, tmp_path / f"{name}.npz", **changes)
        with pytest.raises(ModelError, match=pattern):
            ForceModel.load(path)


def test_cli_bad_model_file_exit_2(model_file, tmp_path, shared_data, capsys):
    path = tmp_path / "trunc.npz"
    path.write_bytes(model_file.read_bytes()[:500])
    code = cli.main(["evaluate", str(path), str(shared_data / "uracil.npz"), "--n-test", "5", "--json"])
    out = _last_json(capsys.readouterr().out)
    assert code == 2 and out["error_type"] == "ModelError" and "truncated or damaged" in out["error"]


@pytest.mark.parametrize("ext", ["npz", "extxyz", "traj", "db"])
def test_frame_selection_matches_numpy_slicing_in_every_format(tmp_path, shared_data, ext):
    """Found by tests/test_fuzz.py: ASE's db reader failed on stepped slices, extxyz on negative steps."""
    t = load_trajectory(shared_data / "ethanol.npz", frames=":7")
    path = data.write_trajectory(t, tmp_path / f"e.{ext}")
    for sel in ["::2", "1::3", "-3:", "::-1", "5:1:-2", "-2", "2:100", "-100:2", "-1::-2"]:
        want = np.atleast_1d(np.arange(7)[data.parse_frames(sel)])
        got = load_trajectory(path, frames=sel)
        np.testing.assert_allclose(got.R, t.R[want], atol=1e-12, err_msg=f"{ext} {sel}")
    with pytest.raises(data.FrameSelectionError, match="selects no frames"):
        load_trajectory(path, frames="100:")


def test_fixed_hyperparameters_checked_before_the_search(shared_data, tmp_path, capsys):
    """Found by tests/test_fuzz.py: --gamma 0 without --lam divided by zero inside the λ search."""
    t = load_trajectory(shared_data / "uracil.npz", frames=":4")
    for gamma, lam, pattern in [(0.0, None, "γ must be a finite number > 0"), (np.nan, None, "γ = nan"),
                                (np.inf, 1e-6, "γ = inf"), (None, -1.0, "λ must be a finite number >= 0"),
                                (0.5, np.nan, "λ = nan")]:
        with pytest.raises(ModelError, match=pattern):
            fit_force_model(t.R, t.F, t.z, mode="gdml", gamma=gamma, lam=lam)
    code = cli.main(["train", str(shared_data / "uracil.npz"), "--frames", ":6", "--n-train", "2", "--gamma", "0",
                     "--out", str(tmp_path / "m.npz"), "--json"])
    out = _last_json(capsys.readouterr().out)
    assert code == 2 and out["error_type"] == "ModelError" and "γ must be" in out["error"]

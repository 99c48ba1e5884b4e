"""Loaders and writers on real files: the shared MD17/rMD17 data and files written by ASE itself."""

from __future__ import annotations

import hashlib

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase import units as aseu
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from aff_app.io import files as data
from aff_app.io.files import (
    DataError,
    FrameSelectionError,
    LabelSetError,
    MissingKeyError,
    PickledDataError,
    UnsupportedFormatError,
    available_label_sets,
    from_atoms_list,
    load_trajectory,
    parse_frames,
    suggest_label_keys,
    to_atoms_list,
    write_extxyz,
    write_sgdml_npz,
    write_trajectory,
)
from aff_app.io.trajectory import Trajectory
from aff_app.units import UnitError

KCAL_MOL_IN_EV = aseu.kcal / aseu.mol  # 1 kcal/mol in eV (≈ 0.0434)

# Molecular formulas of the eight MD17 molecules (chemistry, not program output).
MD17_FORMULAS = {
    "uracil": "C4H4N2O2",
    "benzene": "C6H6",
    "naphthalene": "C10H8",
    "aspirin": "C9H8O4",
    "ethanol": "C2H6O",
    "malonaldehyde": "C3H4O2",
    "toluene": "C7H8",
    "salicylic": "C7H6O3",
}


def _atoms_count(formula: str) -> int:
    return len(Atoms(formula))


# -- the shared MD17/rMD17 files -------------------------------------------------------
def test_shared_directory_holds_exactly_the_eight_molecules(shared_data):
    assert {p.stem for p in shared_data.glob("*.npz")} == set(MD17_FORMULAS)


@pytest.mark.parametrize("mol", sorted(MD17_FORMULAS))
def test_every_shared_file_loads_with_both_label_sets(shared_data, mol):
    path = shared_data / f"{mol}.npz"
    raw = np.load(path)  # allow_pickle defaults to False
    assert available_label_sets(path) == ["rmd17", "md17"]
    rmd = load_trajectory(path)  # default = rmd17 = E/F
    md = load_trajectory(path, label_set="md17")
    for traj, ek, fk, name in ((rmd, "E", "F", "rmd17"), (md, "E_md17", "F_md17", "md17")):
        assert traj.n_frames == 5000
        assert traj.n_atoms == _atoms_count(MD17_FORMULAS[mol])
        assert traj.formula == MD17_FORMULAS[mol]
        assert traj.name == mol
        np.testing.assert_array_equal(traj.z, raw["z"])
        np.testing.assert_array_equal(traj.R, raw["R"])  # Å -> Å: untouched
        np.testing.assert_array_equal(traj.E, raw[ek])
        np.testing.assert_array_equal(traj.F, raw[fk])
        prov = traj.provenance
        assert prov.label_set == name
        assert prov.source == f"{mol}.npz"
        assert prov.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (prov.energy_unit, prov.length_unit) == ("kcal/mol", "Å")
        assert prov.settings["idx"] == raw["idx"].tolist()
        assert "rMD17" in prov.settings["source"]
    # README: the two label sets differ by an offset of hundreds of kcal/mol
    assert abs(np.mean(rmd.E - md.E)) > 100


def test_uracil_summary(shared_data):
    s = load_trajectory(shared_data / "uracil.npz").summary()
    assert (s["n_frames"], s["n_atoms"], s["formula"]) == (5000, 12, "C4H4N2O2")
    assert s["units"] == {"energy": "kcal/mol", "length": "Å", "force": "kcal/mol/Å"}
    assert s["has_energies"] and s["has_forces"]


def test_unknown_label_set_lists_the_available_ones(shared_data):
    with pytest.raises(LabelSetError, match=r"unknown label set 'dft'.*available: rmd17, md17"):
        load_trajectory(shared_data / "uracil.npz", label_set="dft")


def test_frame_slicing_on_npz_matches_numpy_slicing(shared_data):
    path = shared_data / "ethanol.npz"
    raw = np.load(path)
    for frames, sel in ((":", slice(None)), ("::10", slice(None, None, 10)), ("-500:", slice(-500, None)),
                        ("10:20:2", slice(10, 20, 2))):
        traj = load_trajectory(path, frames=frames)
        np.testing.assert_array_equal(traj.R, raw["R"][sel])
        np.testing.assert_array_equal(traj.F, raw["F"][sel])
        assert traj.provenance.settings["idx"] == raw["idx"][sel].tolist()
        assert traj.provenance.frames == frames
    one = load_trajectory(path, frames="5")
    assert one.n_frames == 1
    np.testing.assert_array_equal(one.E, raw["E"][5:6])
    with pytest.raises(FrameSelectionError, match="out of range.*5000 frames"):
        load_trajectory(path, frames=5000)
    with pytest.raises(FrameSelectionError, match="selects no frames"):
        load_trajectory(path, frames="6000:")


def test_bytes_source_equals_path_source(shared_data):
    path = shared_data / "benzene.npz"
    a = load_trajectory(path, frames="::50")
    b = load_trajectory(path.read_bytes(), filename="benzene.npz", frames="::50")
    assert a.fingerprint == b.fingerprint
    assert a.provenance == b.provenance
    c = load_trajectory(path.read_bytes(), filename="upload.bin", fmt="npz", frames="::50")
    assert c.fingerprint == a.fingerprint
    with pytest.raises(DataError, match="need a filename"):
        load_trajectory(path.read_bytes())
    with pytest.raises(UnsupportedFormatError, match=r"supported extensions: \.npz"):
        load_trajectory(path.read_bytes(), filename="upload.bin")


def test_missing_file_is_a_data_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_trajectory(tmp_path / "nope.npz")
    assert isinstance(info.value, DataError)


def test_suggested_label_keys_of_the_shared_layout(shared_data):
    keys = suggest_label_keys(shared_data / "uracil.npz")
    assert keys == {"energy": ["E", "E_md17"], "forces": ["F", "F_md17"]}


# -- npz layouts and units, made in tmp ---------------------------------------------------
@pytest.fixture(scope="module")
def small(shared_data):
    """20 frames of uracil in kcal/mol and Å (numpy arrays straight from the file)."""
    raw = np.load(shared_data / "uracil.npz")
    return {k: raw[k][:20] if raw[k].ndim and k != "z" else raw[k] for k in ("z", "R", "E", "F", "E_md17", "F_md17", "idx")}


def test_rmd17_release_layout(tmp_path, small):
    path = tmp_path / "rmd17_uracil.npz"
    np.savez(path, nuclear_charges=small["z"], coords=small["R"], energies=small["E"], forces=small["F"],
             old_energies=small["E_md17"], old_forces=small["F_md17"], old_indices=small["idx"])
    assert available_label_sets(path) == ["rmd17", "md17"]
    t = load_trajectory(path)
    np.testing.assert_array_equal(t.R, small["R"])
    np.testing.assert_array_equal(t.E, small["E"])
    np.testing.assert_array_equal(t.F, small["F"])
    assert t.provenance.settings["idx"] == small["idx"].tolist()
    t_old = load_trajectory(path, label_set="md17", frames="2:4")
    np.testing.assert_array_equal(t_old.E, small["E_md17"][2:4])
    np.testing.assert_array_equal(t_old.F, small["F_md17"][2:4])


def test_npz_in_bohr_and_ev_is_converted(tmp_path, small):
    """An sGDML file in bohr and eV: positions × a0, energies ÷ (kcal/mol in eV), forces in eV/bohr."""
    R_bohr = small["R"] / aseu.Bohr
    E_ev = small["E"] * KCAL_MOL_IN_EV
    F_ev_bohr = small["F"] * KCAL_MOL_IN_EV * aseu.Bohr
    path = tmp_path / "bohr_ev.npz"
    np.savez(path, z=small["z"], R=R_bohr, E=E_ev[:, None], F=F_ev_bohr, r_unit=np.array("bohr"), e_unit=np.array("eV"))
    t = load_trajectory(path)
    assert (t.provenance.energy_unit, t.provenance.length_unit) == ("eV", "bohr")
    np.testing.assert_allclose(t.R, R_bohr * aseu.Bohr, rtol=1e-15)
    np.testing.assert_allclose(t.R, small["R"], rtol=1e-13)
    np.testing.assert_allclose(t.E, E_ev / KCAL_MOL_IN_EV, rtol=1e-15)
    np.testing.assert_allclose(t.E, small["E"], rtol=1e-13)
    np.testing.assert_allclose(t.F, small["F"], rtol=1e-12, atol=1e-12)
    # a caller's unit overrides the file's
    t2 = load_trajectory(path, energy_unit="kcal/mol", length_unit="Å")
    np.testing.assert_array_equal(t2.E, E_ev)


def test_npz_in_hartree_bytes_units(tmp_path, small):
    path = tmp_path / "ha.npz"
    # units stored as bytes strings, as older sGDML files do
    np.savez(path, z=small["z"], R=small["R"], E=small["E"] / 627.5094740631, F=small["F"] / 627.5094740631,
             e_unit=np.array(b"Ha"), r_unit=np.array(b"Ang"))
    t = load_trajectory(path)
    assert t.provenance.energy_unit == "Hartree"
    np.testing.assert_allclose(t.E, small["E"], rtol=1e-7)  # CODATA 2014 vs 2018


def test_unknown_unit_in_file_names_the_file(tmp_path, small):
    path = tmp_path / "weird.npz"
    np.savez(path, z=small["z"], R=small["R"], E=small["E"], F=small["F"], e_unit=np.array("Rydberg"))
    with pytest.raises(UnitError, match="weird.npz.*Rydberg"):
        load_trajectory(path)


def test_missing_force_key_loads_view_only(tmp_path, small):
    # issue 6: half a label set loads for viewing (aff_app.io.validation's report says it cannot train)
    path = tmp_path / "x.npz"
    np.savez(path, z=small["z"], R=small["R"], E=small["E"])
    t = load_trajectory(path)
    assert t.F is None and not t.has_labels
    np.testing.assert_array_equal(t.E, small["E"])
    assert t.provenance.label_set == "E/-"
    with pytest.raises(MissingKeyError, match=r"file 'x.npz' has no key 'F'; keys present: E, R, z"):
        load_trajectory(path, energy_key="E", forces_key="F")


def test_npz_of_unknown_layout(tmp_path):
    path = tmp_path / "y.npz"
    np.savez(path, positions=np.zeros((2, 3, 3)))
    with pytest.raises(MissingKeyError, match="neither an sGDML.*keys present: positions"):
        load_trajectory(path)


def test_npz_without_labels_is_view_only(tmp_path, small):
    path = tmp_path / "geom.npz"
    np.savez(path, z=small["z"], R=small["R"])
    t = load_trajectory(path)
    assert t.E is None and t.F is None and not t.has_labels
    assert available_label_sets(path) == []


def test_explicit_npz_keys(tmp_path, small):
    path = tmp_path / "keys.npz"
    np.savez(path, z=small["z"], R=small["R"], Epot=small["E"], grad_neg=small["F"])
    assert suggest_label_keys(path) == {"energy": ["Epot"], "forces": ["grad_neg"]}
    t = load_trajectory(path, energy_key="Epot", forces_key="grad_neg")
    np.testing.assert_array_equal(t.E, small["E"])
    assert t.provenance.label_set == "Epot/grad_neg"


def test_pickled_objects_are_refused(tmp_path, small):
    path = tmp_path / "pickled.npz"
    np.savez(path, z=small["z"], R=small["R"], E=small["E"], F=small["F"],
             name=np.array([{"evil": "payload"}], dtype=object))
    with pytest.raises(PickledDataError, match="pickled Python objects; refused"):
        load_trajectory(path)
    # a bare pickle under an .npz name is not an archive at all
    bare = tmp_path / "bare.npz"
    bare.write_bytes(b"\x80\x04\x95" + b"\x00" * 20)
    with pytest.raises(DataError, match="not an .npz"):
        load_trajectory(bare)


# -- ASE formats, written by ASE itself ---------------------------------------------------------
def _ase_frames(n: int = 6, seed: int = 0) -> list[Atoms]:
    """Water frames with calculator results (eV, eV/Å) and custom info/arrays keys (kcal/mol)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        at = molecule("H2O")
        at.positions += rng.normal(scale=0.05, size=(3, 3))
        e, f = rng.normal(-400.0, 1.0), rng.normal(size=(3, 3))
        at.calc = SinglePointCalculator(at, energy=e, forces=f)
        at.info["my_energy"] = rng.normal()
        at.info["comment_text"] = "not a label"
        at.arrays["my_forces"] = rng.normal(size=(3, 3))
        images.append(at)
    return images


def _check_against(traj: Trajectory, images: list[Atoms]) -> None:
    np.testing.assert_array_equal(traj.z, images[0].numbers)
    np.testing.assert_allclose(traj.R, [a.positions for a in images], rtol=0, atol=1e-12)
    np.testing.assert_allclose(traj.E, [a.get_potential_energy() / KCAL_MOL_IN_EV for a in images], rtol=1e-14)
    np.testing.assert_allclose(traj.F, [a.get_forces() / KCAL_MOL_IN_EV for a in images], rtol=1e-14, atol=1e-12)


def test_extxyz_written_by_ase(tmp_path):
    images = _ase_frames()
    path = tmp_path / "water.extxyz"
    ase.io.write(path, images, format="extxyz")
    images = ase.io.read(path, index=":")  # ASE's own writer keeps 8 decimals: compare with what it wrote
    t = load_trajectory(path)
    assert t.provenance.label_set == "calculator"
    assert (t.provenance.energy_unit, t.provenance.length_unit) == ("eV", "Å")
    _check_against(t, images)
    assert available_label_sets(path) == ["calculator"]
    assert suggest_label_keys(path) == {"energy": ["energy", "my_energy"], "forces": ["forces", "my_forces"]}
    # user-named info/arrays keys, in a user-stated unit
    t2 = load_trajectory(path, energy_key="my_energy", forces_key="my_forces", energy_unit="kcal/mol")
    np.testing.assert_array_equal(t2.E, [a.info["my_energy"] for a in images])
    np.testing.assert_array_equal(t2.F, [a.arrays["my_forces"] for a in images])
    assert t2.provenance.label_set == "my_energy/my_forces"
    with pytest.raises(MissingKeyError, match="no energy 'U0'.*my_energy"):
        load_trajectory(path, energy_key="U0")
    with pytest.raises(DataError, match="not one number"):
        load_trajectory(path, energy_key="comment_text")
    with pytest.raises(LabelSetError, match="available: 'calculator'"):
        load_trajectory(path, label_set="md17")


def test_extxyz_frames_and_upload_bytes(tmp_path):
    images = _ase_frames()
    path = tmp_path / "water.xyz"
    ase.io.write(path, images, format="extxyz")
    t = load_trajectory(path.read_bytes(), filename="water.xyz", frames="1::2")
    assert t.n_frames == 3
    _check_against(t, ase.io.read(path, index="1::2"))
    assert t.provenance.frames == "1::2"
    assert t.provenance.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(FrameSelectionError, match="out of range"):
        load_trajectory(path, frames="10")


@pytest.mark.parametrize("fmt", ["traj", "db"])
def test_ase_traj_and_db_written_by_ase(tmp_path, fmt):
    images = _ase_frames()
    path = tmp_path / f"water.{fmt}"
    ase.io.write(path, images, format=fmt)
    t = load_trajectory(path)
    assert t.provenance.label_set == "calculator" and t.provenance.settings["format"] == fmt
    assert t.n_frames == len(images) and t.name == "water"
    _check_against(t, images)
    t2 = load_trajectory(path, frames="-2:")
    _check_against(t2, images[-2:])


def test_plain_xyz_is_view_only(tmp_path):
    path = tmp_path / "plain.xyz"
    path.write_text("3\nwater, frame 0 from somewhere\nO 0 0 0.1\nH 0 0.76 -0.47\nH 0 -0.76 -0.47\n"
                    "3\nframe 1\nO 0 0 0.12\nH 0 0.77 -0.47\nH 0 -0.77 -0.48\n")
    for fmt in (None, "xyz"):
        t = load_trajectory(path, fmt=fmt)
        assert (t.n_frames, t.n_atoms, t.formula) == (2, 3, "H2O")
        assert t.E is None and t.F is None and t.provenance.label_set == ""
        np.testing.assert_allclose(t.R[1, 2], [0, -0.77, -0.48])
    assert available_label_sets(path) == []


def test_frames_of_different_molecules_are_rejected(tmp_path):
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, [molecule("H2O"), molecule("NH3")], format="extxyz")
    with pytest.raises(DataError, match="frame 1 has atoms H3N.*one molecule"):
        load_trajectory(path)


def test_labels_in_some_frames_only_are_rejected(tmp_path):
    images = _ase_frames(3)
    images[1].calc = None
    path = tmp_path / "partial.traj"
    ase.io.write(path, images, format="traj")
    with pytest.raises(DataError, match="1 of 3 frames have no energy"):
        load_trajectory(path)


# -- frame-selection syntax -------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [(":", slice(None)), ("", slice(None)), (None, slice(None)), ("::10", slice(None, None, 10)),
     ("-500:", slice(-500, None)), ("5", 5), ("-1", -1), ("10:20:2", slice(10, 20, 2)), (" 3 : 7 ", slice(3, 7)), (7, 7)],
)
def test_parse_frames(text, expected):
    assert parse_frames(text) == expected


@pytest.mark.parametrize("text", ["a", "1:b", "1:2:3:4", "::0", "1.5"])
def test_parse_frames_rejects(text):
    with pytest.raises(FrameSelectionError):
        parse_frames(text)


# -- writers: round trips ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def uracil50(shared_data):
    return load_trajectory(shared_data / "uracil.npz", frames="::100", label_set="md17")


def test_sgdml_npz_round_trip_is_exact(tmp_path, uracil50):
    path = write_sgdml_npz(uracil50, tmp_path / "u.npz")
    raw = np.load(path)  # allow_pickle=False: every entry must load
    arrays = {k: raw[k] for k in raw.files}
    assert all(a.dtype != object for a in arrays.values())
    assert str(arrays["type"]) == "d" and str(arrays["r_unit"]) == "Ang" and str(arrays["e_unit"]) == "kcal/mol"
    assert arrays["E"].shape == (50, 1) and arrays["F"].shape == (50, 12, 3)
    # sgdml.utils.io.dataset_md5: md5 over the md5 digests of z, R, E, F (raveled)
    md5 = hashlib.md5()
    for k in ("z", "R", "E", "F"):
        md5.update(hashlib.md5(arrays[k].ravel()).digest())
    assert arrays["md5"].item() == md5.hexdigest().encode()
    back = load_trajectory(path)
    assert back.fingerprint == uracil50.fingerprint  # bit-identical arrays
    assert back.name == "uracil" and back.provenance.label_set == "md17"
    assert back.provenance.settings["idx"] == uracil50.provenance.settings["idx"]
    # no '.npz' appended to a bare name
    assert write_sgdml_npz(uracil50, tmp_path / "bare").name == "bare"


def test_extxyz_round_trip_exact_and_readable_by_ase(tmp_path, uracil50):
    path = write_extxyz(uracil50, tmp_path / "u.extxyz")
    back = load_trajectory(path)
    np.testing.assert_array_equal(back.R, uracil50.R)
    np.testing.assert_allclose(back.E, uracil50.E, rtol=1e-15)  # kcal/mol -> eV -> kcal/mol
    np.testing.assert_allclose(back.F, uracil50.F, rtol=1e-14, atol=1e-13)
    assert back.name == "uracil" and (back.provenance.energy_unit, back.provenance.length_unit) == ("eV", "Å")
    # ASE itself sees eV and eV/Å calculator results
    images = ase.io.read(path, index=":")
    assert len(images) == 50
    np.testing.assert_allclose(images[3].get_potential_energy(), uracil50.E[3] * KCAL_MOL_IN_EV, rtol=1e-15)
    np.testing.assert_allclose(images[3].get_forces(), uracil50.F[3] * KCAL_MOL_IN_EV, rtol=1e-14, atol=1e-14)
    # in kcal/mol the numbers are written unconverted, so the round trip is bit-exact
    path2 = write_extxyz(uracil50, tmp_path / "u_kcal.xyz", energy_unit="kcal/mol")
    back2 = load_trajectory(path2)
    assert back2.provenance.energy_unit == "kcal/mol"
    assert back2.fingerprint == uracil50.fingerprint


def test_extxyz_in_bohr_and_hartree(tmp_path, uracil50):
    path = write_extxyz(uracil50, tmp_path / "u_au.extxyz", energy_unit="Hartree", length_unit="bohr")
    raw = ase.io.read(path, index=0)
    np.testing.assert_allclose(raw.positions, uracil50.R[0] / aseu.Bohr, rtol=1e-15)
    back = load_trajectory(path)
    np.testing.assert_allclose(back.R, uracil50.R, rtol=1e-14)
    np.testing.assert_allclose(back.E, uracil50.E, rtol=1e-14)
    np.testing.assert_allclose(back.F, uracil50.F, rtol=1e-13, atol=1e-12)


def test_atoms_list_round_trip(uracil50):
    images = to_atoms_list(uracil50)
    assert len(images) == 50
    np.testing.assert_allclose(images[0].get_potential_energy(), uracil50.E[0] * KCAL_MOL_IN_EV, rtol=1e-15)
    back = from_atoms_list(images)
    np.testing.assert_array_equal(back.R, uracil50.R)
    np.testing.assert_allclose(back.E, uracil50.E, rtol=1e-15)
    np.testing.assert_allclose(back.F, uracil50.F, rtol=1e-14, atol=1e-13)
    assert back.name == "uracil"


@pytest.mark.parametrize("suffix", [".traj", ".db", ".npz", ".extxyz"])
def test_write_trajectory_dispatch_round_trip(tmp_path, uracil50, suffix):
    sub = uracil50.subset(slice(0, 5))
    path = write_trajectory(sub, tmp_path / f"u{suffix}")
    back = load_trajectory(path)
    np.testing.assert_allclose(back.R, sub.R, rtol=1e-15)
    np.testing.assert_allclose(back.E, sub.E, rtol=1e-15)
    np.testing.assert_allclose(back.F, sub.F, rtol=1e-14, atol=1e-13)
    if suffix == ".db":  # rewriting a database replaces it instead of appending rows
        write_trajectory(sub, path)
        assert load_trajectory(path).n_frames == 5


def test_writers_refuse_view_only_data_for_sgdml(tmp_path):
    view_only = Trajectory(z=[8, 1, 1], R=np.zeros((2, 3, 3)) + np.arange(3)[:, None])
    with pytest.raises(DataError, match="view-only"):
        write_sgdml_npz(view_only, tmp_path / "v.npz")
    # extxyz can hold geometry only
    back = load_trajectory(write_extxyz(view_only, tmp_path / "v.xyz"))
    assert back.E is None and np.array_equal(back.R, view_only.R)


def test_supported_extensions_are_all_loadable():
    assert data.MAX_UPLOAD_MB == 200
    for ext in data.SUPPORTED_EXTENSIONS:
        assert data.detect_format(f"x.{ext}") in data.FORMATS


def test_sgdml_npz_keeps_generation_settings(tmp_path):
    from aff_app.io.trajectory import Provenance

    rng = np.random.default_rng(3)
    traj = Trajectory(
        z=[8, 1, 1], R=rng.normal(size=(4, 3, 3)), E=rng.normal(size=4), F=rng.normal(size=(4, 3, 3)),
        name="water",
        provenance=Provenance(source="simulated:water", label_set="GFN2-xTB",
                              settings={"temperature_K": 300.0, "seed": 1, "relaxation": {"converged": True}}),
    )
    back = load_trajectory(write_sgdml_npz(traj, tmp_path / "w.npz"))
    assert back.provenance.label_set == "GFN2-xTB"
    assert load_trajectory(tmp_path / "w.npz", label_set="gfn2-xtb").fingerprint == traj.fingerprint
    s = back.provenance.settings
    assert (s["temperature_K"], s["seed"], s["relaxation"]) == (300.0, 1, {"converged": True})
    assert s["source"] == "simulated:water" and s["theory"] == "GFN2-xTB"

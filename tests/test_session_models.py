"""The session's model registry: names, renames, removal, table rows, and .npz round trips through bytes."""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from aff_app.gp.persistence import load_model, model_bytes
from aff_app.workflows import pipeline
from aff_app.gp.energy import EnergyModel, fit_energy_model
from aff_app.gp.integrated import IntegratedEnergyModel, fit_integrated_energy
from aff_app.gp.force import ForceModel, ModelError
from aff_app.workflows.registry import (
    ROW_COLUMNS,
    ModelRegistry,
    RegistryError,
    default_name,
)

REPO = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def _benzene():
    from aff_app.io.files import load_trajectory

    return load_trajectory(REPO / "sample_data" / "benzene.npz")


@lru_cache(maxsize=None)
def _model(mode: str = "aff", n_train: int = 12, seed: int = 0) -> ForceModel:
    return pipeline.train_model(_benzene(), model=mode, n_train=n_train, seed=seed, n_test=10, gamma=4.0, lam=1e-8)


def test_default_name_names_model_size_and_seed():
    assert default_name("aff", 200, 0) == "AFF M=200 seed 0"
    assert default_name("sgdml", 50, 3) == "sGDML M=50 seed 3"
    assert default_name("gdml", 10, None) == "GDML M=10"


def test_add_uses_default_name_and_makes_clashes_unique():
    reg = ModelRegistry()
    a = reg.add(_model())
    b = reg.add(_model())
    assert a.name == "AFF M=12 seed 0"
    assert b.name == "AFF M=12 seed 0 (2)"
    assert reg.names() == [a.name, b.name]
    assert a.uid != b.uid
    assert a.data_fingerprint == _benzene().fingerprint  # taken from the model's provenance
    with pytest.raises(RegistryError, match="exists already"):
        reg.add(_model(), name=a.name, unique=False)
    assert len(reg) == 2


def test_names_are_cleaned_and_validated():
    reg = ModelRegistry()
    e = reg.add(_model(), name="  my   model ")
    assert e.name == "my model"
    for bad in ("", "   ", "x" * 200):
        with pytest.raises(RegistryError):
            reg.add(_model(), name=bad)
    with pytest.raises(RegistryError, match="ForceModel"):
        reg.add("not a model")  # type: ignore[arg-type]


def test_rename_keeps_order_uid_and_refuses_taken_names():
    reg = ModelRegistry()
    a = reg.add(_model(), name="first")
    reg.add(_model(), name="second")
    reg.add(_model(), name="third")
    uid = a.uid
    reg.rename("first", "renamed")
    assert reg.names() == ["renamed", "second", "third"]
    assert reg.get("renamed").uid == uid and reg.get("renamed").name == "renamed"
    with pytest.raises(RegistryError, match="exists already"):
        reg.rename("renamed", "third")
    with pytest.raises(RegistryError, match="no model named"):
        reg.rename("missing", "x")
    assert "first" not in reg


def test_remove_and_get():
    reg = ModelRegistry()
    reg.add(_model(), name="a")
    reg.add(_model(), name="b")
    removed = reg.remove("a")
    assert removed.name == "a" and reg.names() == ["b"]
    with pytest.raises(RegistryError, match="session has: b"):
        reg.get("a")


def test_rows_carry_hyperparameters_and_metrics_with_none_for_unknown():
    reg = ModelRegistry()
    m = _model()
    e = reg.add(m, name="m")
    row = reg.rows()[0]
    assert tuple(row) == ROW_COLUMNS
    assert row["model"] == "AFF" and row["M"] == 12 and row["seed"] == 0
    assert row["gamma (1/Å)"] == pytest.approx(4.0) and row["lambda"] == pytest.approx(1e-8)
    assert row["train time (s)"] == pytest.approx(m.record.timings.train_s)
    assert row["force MAE (kcal/mol/Å)"] is None and row["PCI(95%)"] is None  # not evaluated yet
    reg.set_metrics("m", {"force_mae": 0.5, "pci": 0.93, "lci": 2.0, "energy_mae": float("nan")})
    row = reg.rows()[0]
    assert row["force MAE (kcal/mol/Å)"] == 0.5 and row["PCI(95%)"] == 0.93 and row["LCI(95%) (kcal/mol/Å)"] == 2.0
    assert row["energy MAE (kcal/mol)"] is None  # NaN never becomes a number in a table
    assert row["energy model"] is None  # a force model alone: no energy model to name
    assert e.test_idx == list(m.record.split.test) and len(e.test_idx) == 10


def test_for_data_filters_by_fingerprint():
    reg = ModelRegistry()
    reg.add(_model(), name="here")
    reg.add(_model(), name="elsewhere", data_fingerprint="other")
    assert [e.name for e in reg.for_data(_benzene().fingerprint)] == ["here"]


def test_force_model_bytes_round_trip():
    reg = ModelRegistry()
    e = reg.add(_model(), name="f")
    data = model_bytes(e.force, e.energy)
    force, energy = load_model(data)
    assert energy is None
    R = _benzene().R[:3]
    np.testing.assert_allclose(force.predict(R).mean, e.force.predict(R).mean, rtol=1e-10, atol=1e-10)
    assert force.record.split.seed == 0


def test_energy_model_bytes_round_trip_carries_the_force_model():
    traj = _benzene()
    m = _model()
    em = fit_energy_model(m, traj.R[m.train_idx], traj.E[m.train_idx], gamma=4.0, lam=1e-8)
    reg = ModelRegistry()
    e = reg.add(m, energy=em, name="fe")
    force, energy = load_model(model_bytes(e.force, e.energy))
    assert isinstance(energy, EnergyModel)
    R = traj.R[-2:]
    np.testing.assert_allclose(energy.predict(R).mean, em.predict(R).mean, rtol=1e-9)
    np.testing.assert_allclose(force.alpha[0], m.alpha[0])


def test_integrated_energy_bytes_round_trip():
    traj = _benzene()
    m = _model("gdml", 6)
    im = fit_integrated_energy(m, traj.R[m.train_idx], traj.E[m.train_idx])
    reg = ModelRegistry()
    force, energy = load_model(model_bytes(m, reg.add(m, energy=im).energy))
    assert isinstance(energy, IntegratedEnergyModel) and force.mode == "gdml"
    np.testing.assert_allclose(energy.predict(traj.R[-2:]).mean, im.predict(traj.R[-2:]).mean, rtol=1e-9)


def test_energy_model_of_another_molecule_is_refused():
    from aff_app.io.files import load_trajectory

    eth = load_trajectory(REPO / "sample_data" / "ethanol.npz")
    me = pipeline.train_model(eth, model="aff", n_train=5, n_test=2, gamma=4.0, lam=1e-8)
    em = fit_energy_model(me, eth.R[me.train_idx], eth.E[me.train_idx], gamma=4.0, lam=1e-8)
    reg = ModelRegistry()
    with pytest.raises(RegistryError, match=r"energy model is for 9 atoms but the force model for 12"):
        reg.add(_model(), energy=em)
    with pytest.raises(RegistryError, match="expected an energy model"):
        reg.add(_model(), energy="nope")  # type: ignore[arg-type]
    assert len(reg) == 0
    assert reg.add(me, energy=em).energy is em


def _arrays(m: ForceModel) -> dict:
    buf = io.BytesIO()
    m.save(buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"this is not a zip archive", "not an .npz"),
    ],
)
def test_load_refuses_non_models(data, match):
    with pytest.raises(ModelError, match=match):
        load_model(data)


def test_load_refuses_pickles_and_foreign_npz():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ModelError, match="not an .npz"):
        load_model(buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, R=np.zeros((2, 3, 3)), z=np.array([1, 1, 8]))
    with pytest.raises(ModelError, match="not an aff_app model"):
        load_model(buf.getvalue())
    # a damaged model (alpha of the wrong size) is refused with the reason
    arrays = _arrays(_model())
    arrays["alpha"] = arrays["alpha"][:-3]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with pytest.raises(ModelError, match="alpha"):
        load_model(buf.getvalue())


def test_train_time_none_when_missing():
    m = _model()
    info = m.record.to_dict()
    info.pop("timings")
    clone = ForceModel.from_arrays({**_arrays(m), "info": np.array(__import__("json").dumps(info))})
    e = ModelRegistry().add(clone, source="uploaded")
    assert e.train_time_s is None and e.source == "uploaded"
    assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in e.row().values())


def test_progress_text_shows_elapsed_and_remaining_time():
    from aff_app.ui.jobs import progress_text

    assert progress_text("fitting", 0.5, 1.0) == "fitting (50%)"  # nothing to say in the first 2 s
    assert progress_text("fitting", 0.5, 10.0) == "fitting (50%) · 10 s elapsed, about 10 s left"
    assert progress_text("search", 0.1, 4.0, estimate_s=30.0) == "search (10%) · 4 s elapsed, about 26 s left"
    assert progress_text("search", 0.1, 4.0) == "search (10%) · 4 s elapsed"
    assert progress_text("done", 1.0, 200.0) == "done (100%) · 3 min 20 s elapsed, finishing"


def test_time_estimate_parts_follow_the_settings():
    from aff_app.gp.budget import estimate_cost, estimate_time

    cost = estimate_cost(300, [6, 6], n_perms=12)
    full = estimate_time(cost, 12, search=True, energy=True, n_test=200)
    assert full.total_s == pytest.approx(full.search_s + full.fit_s + full.energy_s + full.held_out_s)
    bare = estimate_time(cost, 12, search=False, energy=False, n_test=200)
    assert bare.search_s == bare.energy_s == 0 and bare.fit_s == full.fit_s
    assert estimate_time(cost, 12, search=True, energy=True, n_test=400).held_out_s == pytest.approx(2 * full.held_out_s)
    assert 0 < full.training_share < 1
    bigger = estimate_time(estimate_cost(800, [6, 6], n_perms=12), 12, search=True, energy=True, n_test=200)
    assert bigger.fit_s > 5 * full.fit_s  # the factorisation grows as M³


def test_on_change_hears_every_change_except_the_silent_ones():
    heard = []
    reg = ModelRegistry(on_change=lambda event, entry, old: heard.append((event, entry.name, old)))
    a = reg.add(_model(), name="a")
    reg.add(_model(), name="restored", notify=False)
    reg.rename("a", "b")
    reg.set_metrics("b", {"force_mae": 0.1})
    reg.remove("restored", notify=False)
    reg.remove("b")
    assert heard == [("add", "a", None), ("rename", "b", "a"), ("metrics", "b", None), ("remove", "b", None)]
    assert reg.uid_names() == {} and a.name == "b"


def test_a_uid_is_in_a_registry_once():
    reg = ModelRegistry()
    a = reg.add(_model(), name="a")
    with pytest.raises(RegistryError, match="in the registry already \\(as 'a'\\)"):
        reg.add(_model(), name="b", uid=a.uid)
    assert reg.names() == ["a"]

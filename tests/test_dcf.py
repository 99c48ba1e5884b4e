"""The DCF-style direct covariant force network (aff_app.dcf): symmetry, recovery, gradients, training, files."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest

from aff_app.cancel import Cancelled
from aff_app.dcf import DCF_FORMAT, DCFError, DCFModel, DCFSettings, fit_dcf
from aff_app.dcf.features import atom_features, n_features, n_vectors
from aff_app.dcf.network import MLP, force_loss, recover, recovery_matrix
from aff_app.errors import AFFError
from aff_app.gp.force import FORCE_FORMAT, ModelError
from aff_app.io.files import load_trajectory

#: Small but real: ethanol (rMD17), enough epochs to learn, few enough to stay fast.
SMALL = DCFSettings(hidden=(32,), max_epochs=40, patience=10, n_radial=12, n_vector_radial=8,
                    vector_max=2.6, vector_width=0.2, n_angles=4, n_angular_radial=3, seed=3)
TINY = dataclasses.replace(SMALL, max_epochs=3)


@pytest.fixture(scope="module")
def ethanol(shared_data):
    return load_trajectory(shared_data / "ethanol.npz", label_set="rmd17")


@pytest.fixture(scope="module")
def model(ethanol):
    return fit_dcf(ethanol.R[:200], ethanol.F[:200], ethanol.z, train_idx=np.arange(200), settings=SMALL)


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# -- symmetry ---------------------------------------------------------------------
def test_forces_rotate_and_ignore_translation(model, ethanol):
    rng = np.random.default_rng(0)
    R = ethanol.R[300:305]
    F = model.predict_forces(R)
    for _ in range(3):
        Q, t = _rotation(rng), rng.normal(scale=5.0, size=3)
        F_rot = model.predict_forces(R @ Q.T + t)
        np.testing.assert_allclose(F_rot, F @ Q.T, atol=1e-7 * np.abs(F).max())
    assert not np.allclose(F @ Q.T, F, atol=1e-3)  # the check above has teeth: the rotation moved the forces


def test_forces_mirror_with_the_molecule(model, ethanol):
    # the vectors are polar (no cross products), so a reflection acts on forces as on positions
    R = ethanol.R[310:313]
    M = np.diag([1.0, 1.0, -1.0])
    np.testing.assert_allclose(model.predict_forces(R @ M), model.predict_forces(R) @ M, atol=1e-7 * 100)


def test_forces_permute_with_atoms(model, ethanol):
    R = ethanol.R[320:324]
    F = model.predict_forces(R)
    h = np.flatnonzero(ethanol.z == 1)
    for i, j in [(h[0], h[1]), (h[0], h[-1])]:
        perm = np.arange(ethanol.n_atoms)
        perm[[i, j]] = perm[[j, i]]
        F_swapped = model.predict_forces(R[:, perm])
        np.testing.assert_allclose(F_swapped, F[:, perm], atol=1e-8 * np.abs(F).max())
        assert not np.allclose(F[:, i], F[:, j], atol=1e-3)  # the two atoms' forces differ: a real swap


def test_features_invariant_and_vectors_covariant(ethanol):
    spec = SMALL.feature_spec(ethanol.z)
    R = ethanol.R[:4]
    X, V = atom_features(R, ethanol.z, spec)
    assert X.shape == (4, ethanol.n_atoms, n_features(spec)) and V.shape == (4, ethanol.n_atoms, n_vectors(spec), 3)
    Q = _rotation(np.random.default_rng(1))
    X2, V2 = atom_features(R @ Q.T + 1.5, ethanol.z, spec)
    np.testing.assert_allclose(X2, X, atol=1e-9 * np.abs(X).max())
    np.testing.assert_allclose(V2, V @ Q.T, atol=1e-10)


# -- the least-squares recovery ---------------------------------------------------
def test_recovery_exact_when_projections_are_exact():
    rng = np.random.default_rng(2)
    V = rng.normal(size=(50, 7, 3))
    F = rng.normal(scale=20.0, size=(50, 3))
    p = np.einsum("nkc,nc->nk", V, F)
    np.testing.assert_allclose(recover(recovery_matrix(V, 0.0), p), F, rtol=1e-10, atol=1e-9)
    # the relative ridge biases well-conditioned atoms only slightly ...
    np.testing.assert_allclose(recover(recovery_matrix(V, 1e-8), p), F, atol=1e-5)
    # ... and keeps a degenerate atom (all vectors collinear, or none) finite
    V_bad = np.zeros((2, 7, 3))
    V_bad[0, :, 0] = rng.normal(size=7)
    A = recovery_matrix(V_bad, 1e-3)
    assert np.all(np.isfinite(A))
    out = recover(A, np.einsum("nkc,nc->nk", V_bad, F[:2]))
    np.testing.assert_allclose(out[0, 0], F[0, 0] / (1 + 1e-3 / 3), rtol=1e-9)
    np.testing.assert_allclose(out[1], 0.0)


# -- gradients --------------------------------------------------------------------
def test_network_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    net = MLP.init((5, 6, 4, 7), rng)
    net.skip[...] = rng.normal(scale=0.3, size=net.skip.shape)
    for b in net.biases:
        b[...] = rng.normal(scale=0.1, size=b.shape)
    x = rng.normal(size=(9, 5))
    A = rng.normal(size=(9, 3, 7))
    F = rng.normal(size=(9, 3))
    p_mean, p_std = rng.normal(size=7), rng.uniform(0.5, 2.0, size=7)

    def loss() -> float:
        return force_loss(A, p_mean + p_std * net.forward(x), F, 1.7)[0]

    out, acts = net.forward(x, keep=True)
    _, g = force_loss(A, p_mean + p_std * out, F, 1.7)
    grads = net.backward(acts, g * p_std)
    h = 1e-6
    checked = 0
    for param, grad in zip(net.params, grads):
        assert grad.shape == param.shape
        flat, gflat = param.reshape(-1), grad.reshape(-1)
        for i in rng.choice(flat.size, size=min(flat.size, 6), replace=False):
            old = flat[i]
            flat[i] = old + h
            up = loss()
            flat[i] = old - h
            down = loss()
            flat[i] = old
            assert gflat[i] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)
            checked += 1
    assert checked > 30


# -- training ---------------------------------------------------------------------
def test_training_learns_held_out_forces(model, ethanol):
    R, F = ethanol.R[1000:1300], ethanol.F[1000:1300]
    mae = np.abs(model.predict_forces(R) - F).mean()
    assert mae < 0.35 * np.abs(F).mean(), (mae, np.abs(F).mean())  # measured: 4.4 against 20
    h = model.history
    assert h.epochs == len(h.train_loss) == len(h.valid_loss) and 1 <= h.epochs <= SMALL.max_epochs
    assert h.stop_reason in ("early stopping", "max_epochs", "time limit")
    assert h.valid_loss[h.best_epochs.min() - 1:].min() < h.valid_loss[0]  # validation improved
    assert model.n_train == 200 and model.n_atoms == 9 and model.mode == "dcf"
    assert np.isnan(model.gamma) and np.isnan(model.lam) and model.has_interval is False
    pred = model.predict(R[:3])
    assert pred.mean.shape == (3, 9, 3) and pred.std is None and pred.noise_var is None
    assert model.predict(R[0]).mean.shape == (1, 9, 3)
    assert model.record.mode == "dcf" and model.record.n_train == 200


def test_same_seed_same_model(ethanol):
    a = fit_dcf(ethanol.R[:30], ethanol.F[:30], ethanol.z, settings=TINY)
    b = fit_dcf(ethanol.R[:30], ethanol.F[:30], ethanol.z, settings=TINY)
    c = fit_dcf(ethanol.R[:30], ethanol.F[:30], ethanol.z, settings=dataclasses.replace(TINY, seed=4))
    for na, nb, nc in zip(a.networks, b.networks, c.networks):
        for pa, pb, pc in zip(na.params, nb.params, nc.params):
            np.testing.assert_array_equal(pa, pb)
        assert any(not np.array_equal(pa, pc) for pa, pc in zip(na.params, nc.params))


def test_progress_and_cancel(ethanol):
    seen = []
    fit_dcf(ethanol.R[:20], ethanol.F[:20], ethanol.z, settings=TINY, progress=lambda f, m: seen.append((f, m)))
    assert len(seen) >= TINY.max_epochs + 1 and seen[-1][0] == 1.0
    assert all(0.0 <= f <= 1.0 for f, _ in seen)
    polls = []

    def stop() -> bool:
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(Cancelled):
        fit_dcf(ethanol.R[:20], ethanol.F[:20], ethanol.z, settings=dataclasses.replace(TINY, max_epochs=50),
                should_stop=stop)


def test_time_limit_stops_training(ethanol):
    m = fit_dcf(ethanol.R[:20], ethanol.F[:20], ethanol.z,
                settings=dataclasses.replace(TINY, max_epochs=10_000, patience=10_000, lr_patience=10_000,
                                             time_limit_s=0.3))
    assert m.history.stop_reason == "time limit" and m.history.epochs < 10_000


# -- files ------------------------------------------------------------------------
def _roundtrip(model: DCFModel) -> DCFModel:
    buf = io.BytesIO()
    model.save(buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}
    return DCFModel.from_arrays(arrays)


def test_save_load_roundtrip_predicts_identically(model, ethanol):
    loaded = _roundtrip(model)
    R = ethanol.R[400:410]
    np.testing.assert_array_equal(loaded.predict_forces(R), model.predict_forces(R))
    assert loaded.settings == model.settings
    np.testing.assert_array_equal(loaded.train_idx, model.train_idx)
    np.testing.assert_array_equal(loaded.history.valid_loss, model.history.valid_loss)
    assert loaded.history.stop_reason == model.history.stop_reason
    assert loaded.record == model.record
    arrays = model.to_arrays(prefix="dcf_")
    assert all(k.startswith("dcf_") for k in arrays) and str(arrays["dcf_format"]) == DCF_FORMAT
    assert all(a.dtype != object for a in arrays.values())
    again = DCFModel.from_arrays({**arrays, "other": np.zeros(2)}, prefix="dcf_")
    np.testing.assert_array_equal(again.predict_forces(R), model.predict_forces(R))


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("W0"), "missing"),
    (lambda d: d.pop("settings"), "missing keys"),
    (lambda d: d.__setitem__("format", np.array(FORCE_FORMAT)), "expected model format"),
    (lambda d: d.__setitem__("format", np.array("aff_app.DCFModel/9")), "newer"),
    (lambda d: d.__setitem__("W1", d["W1"][:, :-1]), "layer 1"),
    (lambda d: d.__setitem__("S", d["S"] * np.nan), "skip"),
    (lambda d: d["W0"].__setitem__((0, 0, 0), np.inf), "non-finite"),
    (lambda d: d.__setitem__("x_std", -d["x_std"]), "positive"),
    (lambda d: d.__setitem__("settings", np.array("{not json")), "JSON"),
    (lambda d: d.__setitem__("settings", np.array(json.dumps({"hidden": [32], "colour": 1}))), "unknown"),
    (lambda d: d.__setitem__("settings", np.array(json.dumps({"hidden": [32], "cutoff": -1.0}))), "cutoff"),
    (lambda d: d.__setitem__("z", d["z"][:-1]), "atoms"),
    (lambda d: d.__setitem__("z", d["z"].astype(float)), "atomic numbers"),
    (lambda d: d.__setitem__("elements", np.array([1, 6, 7])), "elements"),
    (lambda d: d.__setitem__("train_idx", d["train_idx"][:5]), "train_idx"),
    (lambda d: d.__setitem__("mode", np.array("aff")), "mode"),
    (lambda d: d.__setitem__("info", np.array("[1, 2]")), "JSON object"),
    (lambda d: d.__setitem__("W2", d["W1"]), "more layers"),
    (lambda d: d.__setitem__("history", np.array(["{}", "{}"])), "one JSON string"),
])
def test_damaged_arrays_raise_model_error(model, damage, message):
    d = {k: np.array(v, copy=True) for k, v in model.to_arrays().items()}
    damage(d)
    with pytest.raises(ModelError, match=message) as info:
        DCFModel.from_arrays(d, where="test.npz")
    assert "test.npz" in str(info.value)


def test_foreign_arrays_raise_model_error():
    with pytest.raises(ModelError, match="missing keys"):
        DCFModel.from_arrays({"R": np.zeros((3, 2, 3)), "F": np.zeros((3, 2, 3))})
    with pytest.raises(ModelError):
        DCFModel.from_arrays({})


# -- bad inputs -------------------------------------------------------------------
def test_bad_inputs_raise_dcf_error(ethanol):
    R, F, z = ethanol.R[:20], ethanol.F[:20], ethanol.z
    assert issubclass(DCFError, AFFError) and issubclass(DCFError, ValueError)
    bad = [
        ((R[:9], F[:9], z), "at least 10"),
        ((R, F[:, :-1], z), "shape of R"),
        ((R[:, :-1], F[:, :-1], z), "R must have shape"),
        ((R, F, z[None]), "1-D"),
        ((R, F, z + 0.5), "integer"),
        ((R, F, -z), "atomic numbers"),
        ((np.where(np.arange(20)[:, None, None] == 3, np.nan, R), F, z), "finite"),
        ((R, np.where(np.arange(20)[:, None, None] == 3, np.inf, F), z), "finite"),
        ((R.reshape(20, -1), F, z), "R must have shape"),
    ]
    for args, message in bad:
        with pytest.raises(DCFError, match=message):
            fit_dcf(*args, settings=TINY)
    with pytest.raises(DCFError, match="train_idx"):
        fit_dcf(R, F, z, train_idx=np.arange(5), settings=TINY)
    with pytest.raises(DCFError, match="settings"):
        fit_dcf(R, F, z, settings={"hidden": (4,)})


@pytest.mark.parametrize("kwargs", [dict(hidden=()), dict(cutoff=0.0), dict(batch_size=0), dict(valid_fraction=0.5),
                                    dict(ridge=-1.0), dict(seed=-1), dict(n_radial=2.5), dict(lr_decay=0.0)])
def test_bad_settings_raise_dcf_error(kwargs):
    with pytest.raises(DCFError):
        DCFSettings(**kwargs)


def test_predict_rejects_bad_positions(model):
    for R in (np.zeros((2, 8, 3)), np.zeros((9, 2)), np.zeros((1, 2, 9, 3)), np.full((9, 3), np.nan), "abc"):
        with pytest.raises(ModelError):
            model.predict(R)

"""Parts of one force fit on Dask (``fit_force_model(executor=)``): the γ grid and the large PE sets as tasks.

One real two-worker ``LocalCluster`` (worker processes, as :mod:`aff_app.parallel` starts them)
serves the module and is stopped at its end. Every test compares the Dask fit with the serial one
on the same frames (uracil, M = 40, search subsets of 20-40 frames: seconds per fit).

Same numbers, not close ones: a worker runs BLAS on one thread (its nanny's environment) and so
does this process in these tests (:func:`single_threaded_blas`; the search does so anyway for
several sets), and the tasks align the arrays Dask hands them (:func:`aff_app.parallel.aligned`;
before that, kernels built on a worker differed in the last bit of up to a quarter of their
entries, and γ by ~4e-10 relative after the search's parabolic steps). The comparisons below are
exact, except 1e-10 relative for the intervals of a model whose factors are rebuilt on demand
(as for ``keep_factors=False``: another build of the kernels than the fit's).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from aff_app import cli
from aff_app.gp import force as force_module
from aff_app.gp.force import FactorizationError, ForceModel, fit_force_model
from aff_app.gp.kernels import single_threaded_blas
from aff_app.gp.record import FitRecord, SolverRecord
from aff_app.io.files import load_trajectory
from aff_app.gp.kernels import Geometry
from aff_app.parallel import SchedulerChoice, TaskFailedError, TaskUserError, aligned, open_executor

# the workers are other processes: they get this module's helpers by value, not by an import of a test file
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "uracil.npz"
#: Uracil (O C C C N C O N H H H H) with two sets of more than one atom, three carbons and two
#: hydrogens (kernel sides 360 and 240 at M = 40), and seven lone atoms (120); in the fit's order.
SETS = [np.array([0]), np.array([1, 2, 3]), np.array([4]), np.array([5]), np.array([6]), np.array([7]),
        np.array([8, 9]), np.array([10]), np.array([11])]
#: A task size between the lone atoms' kernels and the others': sets 1 and 6 run as tasks.
SMALL_TASK_SIDE = 200
BIG = (1, 6)


@pytest.fixture(scope="module")
def dask_ex():
    ex = open_executor(SchedulerChoice(kind="local", n_workers=2, memory_limit_bytes=2 * 2**30))
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def frames():
    traj = load_trajectory(SAMPLE)
    rng = np.random.default_rng(7)
    idx = np.sort(rng.choice(traj.n_frames, 40, replace=False))
    test = np.setdiff1d(np.arange(traj.n_frames), idx)[::500]  # 6 held-out frames
    return traj.R[idx], traj.F[idx], traj.z, traj.R[test]


def _fit(frames, **kw):
    R, F, z, _ = frames
    with single_threaded_blas():  # the workers' BLAS threads (module docstring)
        return fit_force_model(R, F, z, pe_sets=SETS, **kw)


def _untimed(record):
    return dataclasses.replace(record, seconds=None)


def test_aligned_copies_only_unaligned_arrays():
    # what a task may receive: an array at a byte offset that is not a multiple of 8 (Fortran order kept)
    D = np.asfortranarray(np.random.default_rng(0).normal(size=(30, 66)))
    buf = np.empty(D.nbytes + 16, np.uint8)
    start = (-buf.ctypes.data) % 8 + 4
    Du = buf[start:start + D.nbytes].view(np.float64).reshape(66, 30).T
    Du[...] = D
    assert not Du.flags.aligned and Du.strides == D.strides
    G = Geometry(D=Du, Dmat=np.zeros((30, 12, 12)), V=np.zeros((30, 12, 12, 3)))
    Ga, (same, _) = aligned(G), aligned((D, 3.0))
    assert Ga.D.flags.aligned and Ga.D.strides == D.strides and np.array_equal(Ga.D, D)
    assert Ga.Dmat is G.Dmat and same is D and aligned(Ga) is Ga  # nothing copied that was aligned
    # why it matters: numpy's matmul sums an unaligned operand without BLAS, in another order
    assert np.array_equal(Ga.D @ Ga.D.T, D @ D.T)


# -- the γ grid ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", ["likelihood", "cv"])
def test_search_on_dask_gives_the_serial_gamma_and_lambda(dask_ex, frames, criterion):
    seen = []
    serial = _fit(frames, criterion=criterion, search_frames=30, search_fraction=0.0)
    got = _fit(frames, criterion=criterion, search_frames=30, search_fraction=0.0, executor=dask_ex,
               progress=lambda f, msg: seen.append(msg))
    # the whole search record: γ, λ, score, convergence and every (γ, λ, score) evaluated, bit for bit
    assert (got.gamma, got.lam) == (serial.gamma, serial.lam)
    assert got.record.search == serial.record.search and len(got.record.search.history) >= 5
    # the five grid candidates ran as tasks, named by their γ; the refinement here, one step at a time
    grid = [m for m in seen if "γ grid: γ candidate" in m]
    assert len(grid) == 5 and all(m.endswith("done") for m in grid)
    assert any("best λ" in m for m in seen)
    # every set is far below the task size: factored here, and the model keeps its factors
    assert got.record.solver.task_sets == () and got._chol is not None
    for a, b in zip(got.alpha, serial.alpha):
        np.testing.assert_array_equal(a, b)


# -- the large PE sets -----------------------------------------------------------------------------------
def test_large_sets_as_tasks_give_the_serial_model(dask_ex, frames, monkeypatch, tmp_path):
    monkeypatch.setattr(force_module, "TASK_SET_SIDE", SMALL_TASK_SIDE)
    # search on 20 of the 40 frames, so the λ check runs (on the lone atoms, here) before the tasks
    kw = dict(search_frames=20, search_fraction=0.0)
    serial = _fit(frames, **kw)
    got = _fit(frames, executor=dask_ex, **kw)
    solver = got.record.solver
    assert solver.task_sets == BIG and solver.scheduler.startswith("Dask LocalCluster, 2 workers")
    assert solver.tasks_s > 0 and got.record.timings.cholesky_s >= solver.tasks_s
    assert serial.record.solver.task_sets == () and serial.record.solver.scheduler is None
    assert got.record.lam_check.method == "loo" and set(got.record.lam_check.probe_sets).isdisjoint(BIG)
    assert _untimed(got.record.lam_check) == _untimed(serial.record.lam_check) and got.lam == serial.lam
    # α, σ̂², jitter and the leave-one-out calibration (pooled over local and task sets), exactly
    for a, b in zip(got.alpha, serial.alpha):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.sigma2, serial.sigma2)
    assert got.jitter == serial.jitter and _untimed(got.record.calibration) == _untimed(serial.record.calibration)
    # no factor came back: the model has none, and its intervals rebuild them (as keep_factors=False)
    assert got._chol is None and serial._chol is not None
    R_test = frames[3]
    with single_threaded_blas():
        a, b = got.predict(R_test), serial.predict(R_test)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.noise_var, b.noise_var, rtol=1e-12)
    # the record survives the model file, and a file without the new fields reads as before
    got.save(tmp_path / "m.npz")
    assert ForceModel.load(tmp_path / "m.npz").record.solver == solver
    old = SolverRecord.from_dict({"method": "dense", "reason": "the dense kernels fit the memory budget"})
    assert (old.scheduler, old.task_sets, old.tasks_s) == (None, (), None)
    assert FitRecord.from_dict({"mode": "aff"}).solver.task_sets == ()


def test_sets_too_large_for_a_worker_stay_here(dask_ex, frames, monkeypatch):
    monkeypatch.setattr(force_module, "TASK_SET_SIDE", SMALL_TASK_SIDE)
    # a worker limit that holds set 6's kernel (240²·8 B) within the share but not set 1's (360²·8 B)
    limit = int(8 * 300**2 / force_module.TASK_MEMORY_SHARE)
    monkeypatch.setattr(type(dask_ex), "worker_memory_bytes", lambda self: limit)
    got = _fit(frames, gamma=3.0, lam=1e-7, executor=dask_ex)
    assert got.record.solver.task_sets == (6,)


# -- failures --------------------------------------------------------------------------------------------
def _break(what: str) -> None:
    """On a worker: make one computation fail, as a singular kernel or a bug there would."""
    import aff_app.gp.force as fm
    import aff_app.gp.hyper as hy

    if what == "cholesky":
        fm._original = getattr(fm, "_original", fm._cholesky_with_jitter)

        def fail(K, lam, set_index, set_atoms, rebuild=None):
            raise fm.FactorizationError(f"Cholesky of PE set {set_index} (atoms {list(map(int, set_atoms))}, "
                                        f"size {K.shape[0]}) failed (injected)")

        fm._cholesky_with_jitter = fail
    else:
        hy._original = getattr(hy, "_original", hy.score_gamma)

        def boom(*args, **kwargs):
            raise RuntimeError("eigensolver crashed (injected)")

        hy.score_gamma = boom


def _repair() -> None:
    import aff_app.gp.force as fm
    import aff_app.gp.hyper as hy

    if hasattr(fm, "_original"):
        fm._cholesky_with_jitter = fm.__dict__.pop("_original")
    if hasattr(hy, "_original"):
        hy.score_gamma = hy.__dict__.pop("_original")


def test_a_failing_task_is_named(dask_ex, frames, monkeypatch):
    monkeypatch.setattr(force_module, "TASK_SET_SIDE", SMALL_TASK_SIDE)
    try:
        dask_ex.client.run(_break, "cholesky")
        with pytest.raises(TaskUserError) as info:
            _fit(frames, gamma=3.0, lam=1e-7, executor=dask_ex)
        err = info.value
        # the user's kind of failure (exit 2 in the CLI), naming the set, its atoms and its kernel's side
        assert isinstance(err, TaskFailedError) and isinstance(err.__cause__, FactorizationError)
        assert err.task == "PE set 1 (atoms 1,2,3; kernel side 360)" and "PE set 1 (atoms [1, 2, 3]" in str(err)
        dask_ex.client.run(_repair)
        dask_ex.client.run(_break, "search")
        with pytest.raises(TaskFailedError) as info:
            _fit(frames, search_frames=30, search_fraction=0.0, executor=dask_ex)
        assert info.value.task.startswith("γ candidate ") and "30 search frames, 9 sets" in info.value.task
        assert "eigensolver crashed" in str(info.value) and not isinstance(info.value, TaskUserError)
    finally:
        dask_ex.client.run(_repair)
    # repaired: the cluster fits again
    assert _fit(frames, gamma=3.0, lam=1e-7, executor=dask_ex).record.solver.task_sets == BIG


# -- the command -------------------------------------------------------------------------------------------
def _train(tmp_path, name, *extra):
    return ["train", str(SAMPLE), "--n-train", "40", "--seed", "2", "--no-energy", "--pe-sets", "1,2,3;8,9",
            "--symmetry-frames", "50", "--out", str(tmp_path / f"{name}.npz"), "--json", *extra]


def cli_text(tmp_path, capsys, name, *extra) -> str:
    args = [a for a in _train(tmp_path, name, *extra) if a != "--json"]
    assert cli.main(args) == 0
    return capsys.readouterr().out


def test_cli_train_refuses_a_bad_scheduler(tmp_path, capsys):
    code = cli.main(_train(tmp_path, "bad", "--scheduler", "local:none"))
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 2 and r["error_type"] == "SchedulerError" and "'local:none'" in r["error"]
    assert not (tmp_path / "bad.npz").exists()
    code = cli.main(["train", str(SAMPLE), "--model", "dcf", "--n-train", "20", "--out", str(tmp_path / "p.npz"),
                     "--json", "--scheduler", "local:2"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 2 and "--scheduler runs parts of a GP fit" in r["error"]


@pytest.mark.skipif("executor" not in inspect.signature(__import__("aff_app.workflows.pipeline",
                                                                     fromlist=["train"]).train).parameters,
                    reason="needs the executor pass-through pipeline.train -> fit -> fit_force_model")
def test_cli_train_on_a_local_scheduler_names_it_and_writes_the_serial_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(force_module, "TASK_SET_SIDE", SMALL_TASK_SIDE)
    with single_threaded_blas():  # the sets factored here, on the workers' one BLAS thread (module docstring)
        code = cli.main(_train(tmp_path, "serial"))
        serial = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        code2 = cli.main(_train(tmp_path, "dask", "--scheduler", "local:2"))
        lines = capsys.readouterr().out.strip().splitlines()
    assert code == code2 == 0 and len(lines) == 1  # one JSON line on stdout: Dask wrote nothing there
    r = json.loads(lines[0])
    assert serial["scheduler"]["kind"] == "serial" and serial["solver"]["task_sets"] == []
    assert r["scheduler"]["kind"] == "local" and r["scheduler"]["n_workers"] == 2
    assert r["scheduler"]["description"].startswith("Dask LocalCluster")
    assert r["solver"]["scheduler"] == r["scheduler"]["description"] and r["solver"]["task_sets"] == list(BIG)
    # the same model: the search, the sets and the calibration gave this process's numbers
    assert (r["gamma"], r["lam"], r["sigma2"]) == (serial["gamma"], serial["lam"], serial["sigma2"])
    a, b = ForceModel.load(tmp_path / "dask.npz"), ForceModel.load(tmp_path / "serial.npz")
    assert a.record.solver.task_sets == BIG and b.record.solver.task_sets == ()
    for x, y in zip(a.alpha, b.alpha):
        np.testing.assert_array_equal(x, y)
    # the text output says where the parts ran
    assert code == 0 and "ran on it" not in cli_text(tmp_path, capsys, "text-serial")
    out = cli_text(tmp_path, capsys, "text-dask", "--scheduler", "local:2")
    assert "scheduler: Dask LocalCluster, 2 workers" in out and f"PE sets {list(BIG)}" in out

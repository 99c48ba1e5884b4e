"""Sequential design (aff_app.workflows.design): the selection rule, the shared frames, stopping, the labels, the CLI.

The variance of a GP's force prediction grows with the distance in descriptor space from the training
frames (method.md (11)): a frame with one bond stretched far beyond anything in the training set must
score highest. Two identical candidates have Matérn correlation 1, so once one is picked the other's
discounted score is 0 (the rule of ``select_batch``).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from aff_app import cli
from aff_app.cancel import Cancelled
from aff_app.errors import AFFError
from aff_app.workflows import pipeline
from aff_app.workflows.design import (
    ChosenFrame,
    DesignError,
    DesignResult,
    DesignRow,
    DesignSettings,
    FileLabels,
    XTBLabels,
    chosen_csv,
    design_split,
    frames_to_reach,
    run_design,
    select_batch,
    variance_reduction_scores,
    variance_scores,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "uracil.npz"
TINY = DesignSettings(n_initial=10, batch=10, budget=30, n_test=200)


@lru_cache(maxsize=None)
def _traj():
    from aff_app.io.files import load_trajectory

    return load_trajectory(SAMPLE)


@lru_cache(maxsize=None)
def _tiny_run() -> DesignResult:
    return run_design(_traj(), settings=TINY)


@lru_cache(maxsize=None)
def _small_model():
    traj = _traj()
    idx = np.arange(0, 300, 10)  # 30 frames, 20 fs apart
    return pipeline.fit(traj, idx, pipeline.TrainSettings(gamma=5.0, lam=1e-8, energy=False)).force


# -- the selection rule -----------------------------------------------------------------------------------
def test_variance_score_picks_the_frame_far_from_the_training_set():
    traj, model = _traj(), _small_model()
    cand = traj.R[1000:1040].copy()  # typical frames of the same trajectory
    far = traj.R[1005].copy()
    far[1] += 0.35 * (far[1] - far[0]) / np.linalg.norm(far[1] - far[0])  # stretch one bond by 0.35 Å
    cand[17] = far
    for score in ("sum", "max", "normalised"):
        s = variance_scores(model, cand, score=score)
        assert s.shape == (40,) and np.all(s > 0)
        assert int(np.argmax(s)) == 17, score
    s = variance_scores(model, cand)
    # the sum score is Σ sd² over atoms and components, (kcal/mol/Å)²
    sd = model.predict(cand[:3], return_std=True).std
    np.testing.assert_allclose(s[:3], (sd ** 2).sum(axis=(1, 2)), rtol=1e-10)
    pick, picked = select_batch(s, cand, 1, gamma=model.gamma)
    assert pick.tolist() == [17] and picked[0] == s[17]


def test_greedy_batch_skips_a_duplicate_of_a_picked_frame():
    traj = _traj()
    R = traj.R[[100, 100, 900, 1700]].copy()
    R[1] += 1e-4  # a near-copy of candidate 0
    scores = np.array([10.0, 9.9, 5.0, 1.0])
    pick, picked = select_batch(scores, R, 2, gamma=5.0)
    assert pick.tolist() == [0, 2]  # not the twin, although its own score is second
    assert picked.tolist() == [10.0, 5.0]  # the scores as computed, not discounted
    # without a near-copy the ranking stands
    pick, _ = select_batch(scores, traj.R[[100, 500, 900, 1700]], 2, gamma=0.05)
    assert pick.tolist() == [0, 1]
    # a permuted copy is a copy for the permutation group: with the swap in the group it is skipped
    swapped = R[[0, 0, 2, 3]].copy()
    swapped[1] = R[0][[1, 0] + list(range(2, 12))]
    perms = np.array([np.arange(12), [1, 0] + list(range(2, 12))])
    assert select_batch(scores, swapped, 2, gamma=5.0, perms=perms)[0].tolist() == [0, 2]
    assert select_batch(scores, swapped, 2, gamma=5.0)[0].tolist() == [0, 1]


# -- a small real run --------------------------------------------------------------------------------------
def test_alc_prefers_an_uncertain_crowd_to_a_lone_outlier():
    traj = _traj()
    crowd = traj.R[1000:1030]  # 30 consecutive frames, 2 fs apart: strongly correlated
    lone = traj.R[2500].copy()
    lone[1] += 0.35 * (lone[1] - lone[0]) / np.linalg.norm(lone[1] - lone[0])
    R = np.concatenate([crowd, lone[None]])
    var = np.full(31, 1.0)
    var[30] = 3.0  # the outlier is the least known frame ...
    alc = variance_reduction_scores(var, R, gamma=5.0)
    assert int(np.argmax(var)) == 30 and int(np.argmax(alc)) < 30  # ... but a label in the crowd teaches more
    assert alc[30] >= 3.0  # its own term, ρ = 1
    # with every frame as reference and the identity group it is exactly that sum
    from aff_app.gp.descriptors import inverse_distances
    from aff_app.gp.kernels import matern52

    D = inverse_distances(R)
    rho = np.sqrt(((D[:, None] - D[None]) ** 2).sum(-1))
    np.testing.assert_allclose(alc, matern52(rho, 5.0) ** 2 @ var, rtol=1e-8)


def test_small_run_shares_start_and_test_frames_and_grows_by_batches():
    res = _tiny_run()
    assert res.finished and res.stopped_early is None and res.label_source == "file"
    test, initial, candidates = design_split(_traj().n_frames, TINY)
    np.testing.assert_array_equal(res.test_idx, test)
    np.testing.assert_array_equal(res.initial_idx, initial)
    for s in ("variance", "random"):
        frames = res.frames(s)
        assert frames.size == 30 and np.unique(frames).size == 30
        np.testing.assert_array_equal(frames[:10], initial)  # the same M0 frames
        assert not np.intersect1d(frames, res.test_idx).size  # test frames are never chosen
        assert np.isin(frames[10:], candidates).all()
        ms, mae = res.curve(s)
        assert ms.tolist() == [10, 20, 30] and np.all(np.diff(ms) > 0)
        assert np.all(np.isfinite(mae)) and mae[-1] < mae[0]
        rows = res.strategy_rows(s)
        assert [r.round for r in rows] == [0, 1, 2] and all(0.5 < r.pci <= 1.0 for r in rows)
        assert rows[0].select_s == 0.0 and all(r.fit_s > 0 and r.eval_s > 0 for r in rows)
        assert all(r.force_max_error > r.force_rmse > r.force_mae for r in rows)
    # the same start: round 0 is the same model on the same frames
    assert res.strategy_rows("variance")[0].force_mae == res.strategy_rows("random")[0].force_mae
    assert not np.array_equal(res.frames("variance")[10:], res.frames("random")[10:])
    chosen = [c for c in res.chosen if c.strategy == "variance" and c.round > 0]
    assert all(c.score is not None and c.score > 0 for c in chosen)
    assert all(c.energy is not None for c in res.chosen)  # the sample has energies
    assert res.n_labelled == np.unique(np.concatenate([res.test_idx, res.frames("variance"), res.frames("random")])).size
    csv = chosen_csv(res).splitlines()
    assert csv[0].startswith("strategy,order,round,frame") and len(csv) == 1 + 60
    json.dumps(res.to_dict())  # JSON-ready


def test_stopping_keeps_the_finished_rounds():
    seen = []
    res = run_design(_traj(), settings=TINY, on_round=lambda r: seen.append(len(r.rows)),
                     should_stop=lambda: len(seen) >= 3)
    assert not res.finished and "caller's request" in res.stopped_early and "kept the 3 finished rounds" in res.stopped_early
    assert len(res.rows) == 3 and [r.M for r in res.rows] == [10, 10, 20]
    assert seen == [1, 2, 3]
    # a progress callback raising Cancelled (the app's Cancel) keeps them too
    calls = {"rounds": 0}

    def progress(f, msg):
        if calls["rounds"] >= 2:
            raise Cancelled("design cancelled")

    res = run_design(_traj(), settings=TINY, progress=progress,
                     on_round=lambda r: calls.__setitem__("rounds", len(r.rows)))
    assert len(res.rows) == 2 and "design cancelled" in res.stopped_early
    assert {c.strategy for c in res.chosen} == {"variance", "random"}  # the initial frames of both


# -- bad settings ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    ({"mode": "dcf"}, "predicts no variance"),
    ({"mode": "svm"}, "model must be one of aff, gdml, sgdml"),
    ({"n_initial": 1}, "initial frames M0 must be at least 2"),
    ({"batch": 0}, "batch size must be at least 1"),
    ({"budget": 10}, "budget M_max = 10 is smaller than the 20 initial frames"),
    ({"strategies": ()}, "choose at least one strategy"),
    ({"strategies": ("variance", "greedy")}, "unknown strategy 'greedy'"),
    ({"strategies": ("random", "random")}, "each strategy may be named once"),
    ({"hyper": "sometimes"}, "hyperparameter policy must be one of doubling, every"),
    ({"n_candidates": 5}, "candidates per round (5) must be at least the batch size (20)"),
    ({"score": "mean"}, "score must be one of sum, max, normalised"),
    ({"n_test": 0}, "number of test frames must be at least 1"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_bad_settings_are_design_errors(kw, message):
    with pytest.raises(DesignError) as exc:
        DesignSettings(**kw)
    assert message in str(exc.value)
    assert isinstance(exc.value, AFFError) and isinstance(exc.value, ValueError)


def test_a_pool_too_small_and_labels_missing_are_design_errors():
    traj = _traj()
    with pytest.raises(DesignError, match="exceed the 3000 frames of the pool: use at most 2600 test frames"):
        run_design(traj, settings=DesignSettings(n_test=2700))
    from aff_app.io.trajectory import Trajectory

    with pytest.raises(DesignError, match="has no forces"):
        run_design(Trajectory(z=traj.z, R=traj.R[:100], name="bare"), settings=TINY)
    with pytest.raises(DesignError, match="has no forces"):
        FileLabels(Trajectory(z=traj.z, R=traj.R[:100]))


# -- labels ---------------------------------------------------------------------------------------------------
def test_xtb_labels_match_tblite_and_the_sample_s_own_labels():
    from ase import Atoms
    from ase import units as u
    from tblite.ase import TBLite

    traj = _traj()  # the sample was made with GFN2-xTB (tblite), neutral singlet: the same labels
    lab = XTBLabels(traj.z, traj.R)
    F, E = lab.labels([3, 2500])
    assert F.shape == (2, 12, 3) and E.shape == (2,) and lab.n_computed == 2
    for k, i in enumerate([3, 2500]):
        atoms = Atoms(numbers=traj.z, positions=traj.R[i])
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        kcal = u.kcal / u.mol
        np.testing.assert_allclose(F[k], atoms.get_forces() / kcal, rtol=1e-8, atol=1e-8)
        assert E[k] == pytest.approx(atoms.get_potential_energy() / kcal, abs=1e-8)
    # the units are right (eV would be 23× off); the sample's MD reused each step's SCF guess: ~3e-3 apart
    np.testing.assert_allclose(F, traj.F[[3, 2500]], atol=0.01)
    np.testing.assert_allclose(E, traj.E[[3, 2500]], atol=0.01)
    F2, _ = lab.labels([2500])  # computed once, kept
    assert lab.n_computed == 2 and np.array_equal(F2[0], F[1])


# -- the answer -----------------------------------------------------------------------------------------------
def _result(curves: dict) -> DesignResult:
    rows = tuple(DesignRow(strategy=s, round=k, M=m, force_mae=v, force_rmse=v, force_max_error=4 * v, energy_mae=None,
                           pci=0.95, gamma=1.0, lam=1e-9, searched=True, fit_s=1.0, eval_s=1.0, select_s=0.0, label_s=0.0)
                 for s, pts in curves.items() for k, (m, v) in enumerate(pts))
    return DesignResult(settings=DesignSettings(n_initial=20, batch=20, budget=60), n_frames=1000,
                        test_idx=np.arange(10), initial_idx=np.arange(10, 30), rows=rows,
                        chosen=(ChosenFrame("variance", 0, 0, 10, None, None),), label_source="file", n_labelled=30,
                        label_s=0.0, elapsed_s=1.0)


def test_frames_to_reach_interpolates_log_log_or_says_never():
    res = _result({"variance": [(20, 2.0), (40, 1.0), (60, 0.5)], "random": [(20, 2.0), (40, 1.5), (60, 0.8)]})
    r = frames_to_reach(res)
    t = math.log(0.8) / math.log(0.5)  # where log MAE crosses log 0.8 between M = 40 and 60
    assert r.M == pytest.approx(40 * 1.5 ** t) and r.ratio == pytest.approx(r.M / 60)
    assert (r.target_M, r.target_mae, r.best_mae, r.best_M) == (60, 0.8, 0.5, 60)
    assert "reached random selection's M = 60 force MAE 0.8 kcal/mol/Å with 46 frames (76% of 60)" in r.sentence()
    res = _result({"variance": [(20, 2.0), (40, 1.6), (60, 0.9)], "random": [(20, 2.0), (40, 1.5), (60, 0.8)]})
    r = frames_to_reach(res)
    assert r.M is None and r.ratio is None
    assert "did not reach" in r.sentence() and "its best was 0.9 kcal/mol/Å at M = 60" in r.sentence()
    assert frames_to_reach(_result({"variance": [(20, 1.0)]})) is None


def test_figures_have_units_and_mark_the_answer():
    from aff_app.figures.design import design_curve_figure, energy_trace_figure

    res = _tiny_run()
    fig = design_curve_figure(res)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert "(kcal/mol/Å)" in fig.layout.yaxis.title.text and "M" in fig.layout.xaxis.title.text
    names = [t.name for t in fig.data]
    assert "largest force variance" in names and "random" in names
    assert any(s.line.dash == "dash" for s in fig.layout.shapes)  # random's M_max MAE
    fig = design_curve_figure(_result({"variance": [(20, 2.0), (40, 1.0), (60, 0.5)],
                                       "random": [(20, 2.0), (40, 1.5), (60, 0.8)]}))
    star = [t for t in fig.data if t.marker.symbol == "star"]
    assert len(star) == 1 and star[0].y[0] == 0.8
    trace = energy_trace_figure(res, _traj().E)
    assert "(kcal/mol)" in trace.layout.yaxis.title.text and trace.layout.xaxis.title.text == "frame index"
    chosen = [t for t in trace.data if t.name == "chosen by variance"][0]
    assert len(chosen.x) == 20 and sorted(set(chosen.marker.color)) == [1, 2]
    assert len(energy_trace_figure(res, None, times_ps=np.arange(3000) * 0.002).data) == 2


# -- the CLI ---------------------------------------------------------------------------------------------------
def test_cli_json_and_csv(tmp_path, capsys):
    out = tmp_path / "chosen.csv"
    code = cli.main(["design", str(SAMPLE), "--initial", "10", "--batch", "10", "--budget", "20", "--test", "100",
                     "--out", str(out), "--json"])
    stdout = capsys.readouterr().out
    assert code == 0
    r = json.loads(stdout.strip().splitlines()[-1])
    assert r["ok"] is True and r["command"] == "design" and r["label_source"] == "file"
    assert [(row["strategy"], row["M"]) for row in r["rows"]] == [("variance", 10), ("random", 10), ("variance", 20),
                                                                  ("random", 20)]
    assert r["reached"]["target_M"] == 20 and "sentence" in r["reached"]
    assert len(r["chosen"]) == 40 and r["stopped_early"] is None
    assert out.read_text().startswith("strategy,order,round,frame")


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "the batch size must be at least 1"),
    (["--strategies", "variance,greedy"], "unknown strategy 'greedy'"),
    (["--model", "dcf"], "predicts no variance"),
    (["--test", "2900"], "exceed the 3000 frames of the pool"),
])
def test_cli_bad_settings_exit_2(args, message, capsys):
    code = cli.main(["design", str(SAMPLE), *args, "--json"])
    captured = capsys.readouterr()
    assert code == 2
    r = json.loads(captured.out.strip().splitlines()[-1])
    assert r["ok"] is False and r["error_type"] == "DesignError" and message in r["error"]
    assert "Traceback" not in captured.err

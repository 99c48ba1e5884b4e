"""The reproduction (aff_app.reproduce.run), its figures (aff_app.figures.reproduce) and the `reproduce` command.

One tiny real run is shared by most tests: uracil from ../shared/data/md17,
both label sets, AFF at M = 30 and 60, our GDML at M = 30, fixed force γ/λ
(near uracil's likelihood optimum; the search is tested elsewhere), no sgdml.
"""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest

from aff_app import cli
from aff_app.figures import reproduce as fr
from aff_app.peers import sgdml as peer
from aff_app.io.files import load_trajectory
from aff_app.workflows.metrics import force_report
from aff_app.gp import fit_force_model
from aff_app.reproduce.output import format_table, write_outputs
from aff_app.reproduce.planning import choose_aff_m, choose_peer_m, make_split
from aff_app.reproduce.run import run_reproduction
from aff_app.reproduce.settings import (
    METHOD_AFF,
    METHOD_GDML,
    METHOD_PEER,
    METHOD_SGDML,
    PAPER_TABLE_I,
    ReproduceError,
    ReproduceSettings,
    quick_settings,
)
from aff_app.symmetry import detect_symmetry

GAMMA, LAM = 4.5, 1e-8
TABLE_COLUMNS = {"molecule", "label_set", "m_aff", "m_sgdml", "energy_mae_aff", "energy_mae_sgdml", "force_mae_aff",
                 "force_mae_sgdml", "train_s_aff", "train_s_sgdml", "pci_aff", "lci_aff", "paper", "units"}


def _tiny(shared_data, **kw) -> ReproduceSettings:
    base = dict(molecules=("uracil",), label_sets=("md17", "rmd17"), data_dir=str(shared_data), aff_m=60,
                curve_m=(30,), baseline_m=(30,), peer=False, eval_frames=120, gamma=GAMMA, lam=LAM)
    base.update(kw)
    return ReproduceSettings(**base)


@pytest.fixture(scope="module")
def tiny(shared_data):
    settings = _tiny(shared_data)
    return settings, run_reproduction(settings)


# -- the split ------------------------------------------------------------------------------------
def test_split_is_disjoint_nested_and_seeded():
    sp = make_split(5000, 2000, 200, seed=0, eval_frames=500)
    assert sp.test.size == 2000 and sp.valid.size == 200 and sp.pool.size == 2800
    assert not set(sp.test) & set(sp.valid) and not set(sp.test) & set(sp.pool) and not set(sp.valid) & set(sp.pool)
    assert set(sp.eval) <= set(sp.test) and sp.eval.size == 500
    assert set(sp.train(200)) <= set(sp.train(1600))  # nested learning-curve sets
    # the rule of benchmarks/bench_forces.py: test = first 2000 of one permutation, valid the next 200
    perm = np.random.default_rng(0).permutation(5000)
    np.testing.assert_array_equal(sp.test, np.sort(perm[:2000]))
    np.testing.assert_array_equal(sp.train(300), np.sort(perm[2200:2500]))
    # the quick run evaluates on a subset of the full run's test frames
    assert set(make_split(5000, 2000, 200, seed=0, eval_frames=500).eval) <= set(make_split(5000, 2000, 200).test)
    with pytest.raises(ReproduceError, match="leave 2800"):
        sp.train(2801)
    with pytest.raises(ReproduceError, match="no training frames"):
        make_split(100, 90, 10)


# -- a tiny real run ------------------------------------------------------------------------------
def test_rows_have_every_table_column_with_units(tiny):
    settings, res = tiny
    rows = res["rows"]
    assert [(r["molecule"], r["label_set"]) for r in rows] == [("uracil", "md17"), ("uracil", "rmd17")]
    for r in rows:
        assert TABLE_COLUMNS <= set(r)
        assert r["units"] == {**r["units"], "energy_mae": "kcal/mol", "force_mae": "kcal/mol/Å", "train_s": "s",
                              "pci": "fraction", "lci": "kcal/mol/Å"}
        assert r["m_aff"] == 60 and r["m_sgdml"] is None and r["force_mae_sgdml"] is None  # --no-peer
        assert 0 < r["force_mae_aff"] < 5 and 0 < r["energy_mae_aff"] < 20 and r["train_s_aff"] > 0
        assert 0.5 <= r["pci_aff"] <= 1 and r["lci_aff"] > 0 and r["n_test"] == 120
        # the paper's values beside ours: method.md Table I
        assert r["paper"]["force_mae_aff"] == 0.239 and r["paper"]["m_aff"] == 1600 and r["paper"]["pci_aff"] == 0.978
    assert "not run (no peer)" in res["choices"]["uracil"]["m_sgdml_reason"]
    assert "as requested" in res["choices"]["uracil"]["m_aff_reason"]


def test_one_split_shared_by_methods_and_label_sets(tiny, shared_data):
    settings, res = tiny
    sp = res["splits"]["uracil"]
    test, valid = set(sp["test"]), set(sp["valid"])
    assert len(test) == 2000 and not test & valid and set(sp["eval"]) <= test
    for m, idx in sp["train"].items():
        assert len(idx) == int(m) and not set(idx) & test and not set(idx) & valid
    assert set(sp["train"]["30"]) <= set(sp["train"]["60"])
    # the table's AFF numbers are those of a model trained on exactly these frames, tested on these frames
    traj = load_trajectory(shared_data / "uracil.npz", label_set="rmd17")
    sym = detect_symmetry(traj.R, traj.z, n_samples=200, seed=0)
    tr, ev = np.array(sp["train"]["60"]), np.array(sp["eval"])
    fm = fit_force_model(traj.R[tr], traj.F[tr], traj.z, mode="aff", pe_sets=list(sym.pe_sets), perms=sym.perms,
                         gamma=GAMMA, lam=LAM)
    rep = force_report(traj.F[ev], fm.predict(traj.R[ev]))
    row = next(r for r in res["rows"] if r["label_set"] == "rmd17")
    assert row["force_mae_aff"] == pytest.approx(rep["mae"], rel=1e-9)
    assert row["pci_aff"] == pytest.approx(rep["pci"], rel=1e-9)
    # the two label sets give different numbers on the same frames
    md17 = next(r for r in res["rows"] if r["label_set"] == "md17")
    assert md17["force_mae_aff"] != row["force_mae_aff"]


def test_points_are_the_learning_curves(tiny):
    _, res = tiny
    pts = res["points"]
    for ls in ("md17", "rmd17"):
        aff = sorted(p["M"] for p in pts if p["label_set"] == ls and p["method"] == METHOD_AFF)
        assert aff == [30, 60]
        gdml = [p for p in pts if p["label_set"] == ls and p["method"] == METHOD_GDML]
        assert [p["M"] for p in gdml] == [30] and gdml[0]["energy_mae"] > 0 and gdml[0]["pci"] is None
    for p in pts:
        if p["method"] == METHOD_AFF:
            # Fig. 5: L_norm = LCI / range of the test forces, Δp = 0.95 − PCI
            assert 0 < p["l_norm"] < 1 and p["delta_p"] == pytest.approx(0.95 - p["pci"])
    # more frames, smaller force error (AFF, same test frames)
    for ls in ("md17", "rmd17"):
        f = {p["M"]: p["force_mae"] for p in pts if p["label_set"] == ls and p["method"] == METHOD_AFF}
        assert f[60] < f[30]
    # uracil has no symmetry: sGDML is GDML, so it is skipped with the reason (the paper's Fig. 3 caption)
    assert any(k["method"] == METHOD_SGDML and "trivial" in k["reason"] for k in res["skipped"])


def test_outputs_are_written(tiny, tmp_path):
    _, res = tiny
    files = write_outputs(res, tmp_path / "out")
    for ls in ("md17", "rmd17"):
        for name in ("fig3_learning_curves", "fig5_uncertainty"):
            f = files["figures"][f"{name}_{ls}"]
            html = open(f["html"], encoding="utf-8").read()
            assert "plotly" in html and "training configurations M" in html
            assert open(f["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "out" / "plotly.min.js").is_file()  # the pages work offline
    saved = json.loads(open(files["results"], encoding="utf-8").read())
    assert saved["rows"][0]["force_mae_aff"] == res["rows"][0]["force_mae_aff"]
    table = open(files["table"], encoding="utf-8").read()
    assert "| uracil | md17 | 60 (—) |" in table and "0.239 (0.249)" in table


# -- choosing M -----------------------------------------------------------------------------------
def test_aff_m_is_the_papers_or_the_largest_that_fits():
    sizes = [4, 4, 2, 4, 4]  # naphthalene's PE sets (method.md)
    m, why, _ = choose_aff_m("naphthalene", sizes, 4, 2000, 2800, time_limit_s=1e9, memory_bytes=2**40)
    assert m == 1600 and "the paper's M = 1600" in why
    m, why, est = choose_aff_m("naphthalene", sizes, 4, 2000, 2800, time_limit_s=1e9, memory_bytes=4 * 2**30)
    assert m < 1600 and "GB" in why and est[m]["peak_GB"] <= 4
    m2, why, _ = choose_aff_m("naphthalene", sizes, 4, 2000, 2800, time_limit_s=600, memory_bytes=2**40)
    assert m2 < 1600 and "min limit" in why
    with pytest.raises(ReproduceError, match="no AFF size fits"):
        choose_aff_m("naphthalene", sizes, 4, 2000, 2800, time_limit_s=1.0, memory_bytes=2**40)


def test_peer_m_drops_below_1000_where_its_kernel_does_not_fit():
    budget = int(0.85 * 24 * 2**30)
    m, why, est = choose_peer_m(18, 4, 2800, timeout_s=1e9, memory_bytes=budget)  # naphthalene
    assert m is not None and m < 1000 and est[1000]["fits"] is False and "54000×54000" in why
    assert est[m]["memory_GB"] <= budget / 2**30
    m, why, _ = choose_peer_m(12, 1, 2800, timeout_s=1e9, memory_bytes=2**40)
    assert m == 1000 and "the paper's M = 1000" in why
    m, why, _ = choose_peer_m(12, 1, 2800, timeout_s=1.0, memory_bytes=2**40)
    assert m is None and "limit" in why


def test_settings_are_checked_and_quick_is_small():
    with pytest.raises(ReproduceError, match="label sets"):
        ReproduceSettings(label_sets=("md17", "dft"))
    with pytest.raises(ReproduceError, match="eval_frames"):
        ReproduceSettings(eval_frames=5000)
    q = quick_settings()
    assert q.quick and q.aff_m == 100 and q.peer_m == 50 and q.peer_label_sets == ("md17",)
    assert q.baseline_modes == ("sgdml",) and q.baseline_m == (50,) and q.curve_m == (50,)
    assert q.n_test == 2000 and q.eval_frames == 500 and q.label_sets == ("md17", "rmd17")
    assert set(q.molecules) == set(PAPER_TABLE_I)


def test_missing_peer_fails_before_any_fit(monkeypatch, shared_data):
    def unavailable(name="sgdml"):
        raise peer.PeerUnavailableError(f"sgdml missing; install with `{peer.INSTALL_HINT}` (requirements-peer.txt)")

    monkeypatch.setattr(peer, "require_sgdml", unavailable)
    with pytest.raises(peer.PeerUnavailableError, match="requirements-peer.txt") as exc:
        run_reproduction(_tiny(shared_data, peer=True))
    assert "--no-peer" in str(exc.value)  # the reproduction names its own way round


def test_failed_table_run_of_the_package_falls_back_to_its_largest_finished_run(monkeypatch, shared_data, tmp_path):
    """Real `sgdml all` runs: the pilot (M = 12) finishes, the table size (M = 20) is killed by its time limit."""
    from test_peer import _need

    _need("sgdml.predict")
    real = peer.run_sgdml

    def table_size_times_out(*args, **kw):
        if args[3] == 20:
            kw["timeout_s"] = 0.5
        return real(*args, **kw)

    monkeypatch.setattr(peer, "run_sgdml", table_size_times_out)
    settings = _tiny(shared_data, label_sets=("md17",), curve_m=(), baseline_modes=(), peer=True, peer_m=20,
                     peer_curve_m=(12,), peer_sigmas="10 20", n_valid=10, eval_frames=40, aff_m=30)
    res = run_reproduction(settings, workdir=tmp_path)
    (row,) = res["rows"]
    assert row["m_sgdml"] == 12 and row["force_mae_sgdml"] is not None
    note = row["sgdml_note"]
    assert note.startswith("the M = 20 run failed (did not finish") and note.endswith("its M = 12 run is shown")
    assert [k["method"] for k in res["skipped"] if k.get("M") == 20] == [METHOD_PEER]
    assert [r["n_train"] for r in res["peer_runs"]] == [12, 20] and not res["peer_runs"][1]["ok"]
    assert "uracil/md17: sgdml: the M = 20 run failed" in format_table(res["rows"])


def test_a_package_model_worse_than_zero_forces_counts_as_failed(monkeypatch, shared_data, tmp_path):
    """Real `sgdml all` runs at M = 12 and 20; the M = 20 model's predictions are blown up 10⁴× (as the
    package's naphthalene M = 400 solve did by itself) and must not reach the table."""
    from test_peer import _need

    _need("sgdml.predict")
    real = peer.sgdml_predict

    def broken_at_20(model_path, R):
        E, F = real(model_path, R)
        return (E * 1e4, F * 1e4) if "model_20" in str(model_path) else (E, F)

    monkeypatch.setattr(peer, "sgdml_predict", broken_at_20)
    settings = _tiny(shared_data, label_sets=("md17",), curve_m=(), baseline_modes=(), peer=True, peer_m=20,
                     peer_curve_m=(12,), peer_sigmas="10 20", n_valid=10, eval_frames=40, aff_m=30)
    res = run_reproduction(settings, workdir=tmp_path)
    (row,) = res["rows"]
    assert row["m_sgdml"] == 12 and "worse than zero forces" in row["sgdml_note"]
    run20 = next(r for r in res["peer_runs"] if r["n_train"] == 20)
    assert run20["ok"] is False and run20["valid_force_mae"] > 100
    assert all(p["M"] != 20 for p in res["points"] if p["method"] == METHOD_PEER)


# -- the command ----------------------------------------------------------------------------------
def test_cli_json_last_line(tmp_path, capsys, shared_data):
    out = tmp_path / "repro"
    code = cli.main(["reproduce", "--molecules", "uracil", "--labels", "md17", "--data-dir", str(shared_data),
                     "--aff-m", "30", "--curve-m", "--baseline-modes", "sgdml", "--baseline-m", "20", "--no-peer",
                     "--eval-frames", "50",
                     "--gamma", str(GAMMA), "--lam", str(LAM), "--out-dir", str(out), "--no-png", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    r = json.loads(captured.out.strip().splitlines()[-1])
    assert r["ok"] is True and r["command"] == "reproduce" and r["quick"] is False
    assert len(r["rows"]) == 1 and TABLE_COLUMNS <= set(r["rows"][0])
    assert r["choices"]["uracil"]["m_aff"] == 30 and r["choices"]["uracil"]["m_aff_reason"]
    assert r["settings"]["label_sets"] == ["md17"] and r["settings"]["peer"] is False
    # uracil's group is trivial: the sGDML mode asked for is GDML, fitted once and shown as GDML
    assert [(p["method"], p["M"]) for p in r["points"]] == [(METHOD_AFF, 30), (METHOD_GDML, 20)]
    assert "shown as GDML" in r["skipped"][0]["reason"]
    for f in r["figures"].values():
        assert (out / f["html"].split("/")[-1]).is_file() and f["png"] is None
    assert captured.err == ""  # --json: no progress output


def test_cli_errors_exit_2(tmp_path, capsys, shared_data, monkeypatch):
    code = cli.main(["reproduce", "--molecules", "unobtainium", "--data-dir", str(shared_data), "--no-peer",
                     "--out-dir", str(tmp_path), "--json"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 2 and r["ok"] is False and "unobtainium.npz" in r["error"]
    real = peer.importlib.import_module

    def fake(name, *args):
        if name.split(".")[0] == "sgdml":
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(peer.importlib, "import_module", fake)
    code = cli.main(["reproduce", "--molecules", "uracil", "--data-dir", str(shared_data), "--out-dir",
                     str(tmp_path), "--json"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 2 and r["error_type"] == "PeerUnavailableError" and "requirements-peer.txt" in r["error"]


# -- figures --------------------------------------------------------------------------------------
def _points():
    pts = []
    for mol in ("benzene", "uracil"):
        for method, scale in ((METHOD_AFF, 1.0), (METHOD_GDML, 0.8), ("sGDML (sgdml package)", 0.7)):
            for m in (50, 100, 200):
                p = {"molecule": mol, "label_set": "md17", "method": method, "M": m, "force_mae": scale * 10 / m,
                     "energy_mae": scale * 2 / m, "train_s": scale * m / 10, "pci": None, "lci": None,
                     "l_norm": None, "delta_p": None}
                if method == METHOD_AFF:
                    p.update(pci=0.94, lci=1.0, l_norm=0.05 * 100 / m, delta_p=0.01)
                pts.append(p)
    return pts


def test_learning_curve_one_trace_per_model_log_axes_units():
    pts = [p for p in _points() if p["molecule"] == "benzene"]
    for q, unit in (("force_mae", "(kcal/mol/Å)"), ("energy_mae", "(kcal/mol)"), ("train_s", "(s)")):
        fig = fr.learning_curve_figure(pts, quantity=q)
        spec = json.loads(fig.to_json())
        assert [t["name"] for t in spec["data"]] == [METHOD_AFF, METHOD_GDML, "sGDML (sgdml package)"]
        assert spec["layout"]["xaxis"]["type"] == "log" and spec["layout"]["yaxis"]["type"] == "log"
        assert unit in spec["layout"]["yaxis"]["title"]["text"]
        assert spec["layout"]["xaxis"]["title"]["text"] == "training configurations M"
        assert spec["data"][0]["x"] == [50, 100, 200]
    with pytest.raises(fr.FigureDataError):
        fr.learning_curve_figure(pts, quantity="speed")


def test_grids_legend_once_per_model_and_titled_axes(tmp_path):
    pts = _points()
    fig = fr.learning_curves_grid(pts, label_set="md17")
    spec = json.loads(fig.to_json())
    legend = [t["name"] for t in spec["data"] if t.get("showlegend", True)]
    assert legend == [METHOD_AFF, METHOD_GDML, "sGDML (sgdml package)"]
    assert len(spec["data"]) == 2 * 3 * 3  # molecules × panels × models
    axes = {k: v for k, v in spec["layout"].items() if k.startswith(("xaxis", "yaxis"))}
    assert len(axes) == 12 and all(v["type"] == "log" for v in axes.values())
    ytitles = {v.get("title", {}).get("text") for k, v in axes.items() if k.startswith("yaxis")} - {None}
    assert ytitles == {"force MAE (kcal/mol/Å)", "energy MAE (kcal/mol)", "training time (s)"}
    u = json.loads(fr.uncertainty_grid(pts, label_set="md17").to_json())
    assert [t["type"] for t in u["data"]] == ["bar", "scatter", "bar", "scatter"]
    assert u["data"][0]["x"] == ["50", "100", "200"] and u["data"][1]["y"] == [0.01] * 3
    assert any("Δp = 0.95 − PCI" in (v.get("title", {}).get("text") or "") for v in u["layout"].values()
               if isinstance(v, dict))
    path = tmp_path / "f.png"
    fr.write_png(fig, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    with pytest.raises(fr.FigureDataError):
        fr.uncertainty_grid([p for p in pts if p["method"] != METHOD_AFF])


def test_png_category_axis_keeps_order_and_logs_nothing(tmp_path, caplog):
    # the Fig. 5-like grid's M axis is categorical ("50", "100", "200"): drawn at positions
    # 0, 1, 2 in plotly's order, without matplotlib's category-units message in the run log
    u = fr.uncertainty_grid(_points(), label_set="md17")
    with caplog.at_level("DEBUG", logger="matplotlib"):
        mfig = fr.write_png(u, tmp_path / "u.png")
    assert not [r for r in caplog.records if "categorical units" in r.getMessage()]
    bar_axes = [ax for ax in mfig.axes if ax.patches]
    assert len(bar_axes) == 2
    for ax in bar_axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["50", "100", "200"]
        assert sorted(round(p.get_x() + p.get_width() / 2) for p in ax.patches) == [0, 1, 2]


def test_format_table_puts_sgdml_in_parentheses():
    row = {"molecule": "benzene", "label_set": "md17", "m_aff": 1200, "m_sgdml": 600, "energy_mae_aff": 0.05,
           "energy_mae_sgdml": 0.08, "force_mae_aff": 0.18, "force_mae_sgdml": 0.2, "train_s_aff": 30.0,
           "train_s_sgdml": 900.0, "pci_aff": 0.90, "lci_aff": 0.8, "paper": {"m_aff": 1200, "m_sgdml": 1000}}
    text = format_table([row])
    assert "| benzene | md17 | 1200 (600) | 0.050 (0.080) | 0.180 (0.200) | 30.0 (900.0) | 90.0% | 0.80 |" in text
    assert isinstance(fr.learning_curve_figure(_points()[:3]), go.Figure)

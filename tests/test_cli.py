"""The JSON-contract CLI: a few real subprocesses, the rest through ``main(argv)`` in-process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from aff_app import cli
from aff_app.io.files import load_trajectory


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "aff_app", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_info_json_subprocess(repo_root, shared_data):
    proc = _run(["info", str(shared_data / "uracil.npz"), "--json"], repo_root)
    assert proc.returncode == 0, proc.stderr
    out = _last_json(proc.stdout)
    assert out["ok"] is True and out["command"] == "info"
    assert (out["n_frames"], out["n_atoms"], out["formula"]) == (5000, 12, "C4H4N2O2")
    assert out["units"] == {"energy": "kcal/mol", "length": "Å", "force": "kcal/mol/Å"}
    assert out["label_set"] == "rmd17"


def test_error_subprocess_exit_2_json_no_traceback(repo_root, tmp_path):
    proc = _run(["info", str(tmp_path / "missing.npz"), "--json"], repo_root)
    assert proc.returncode == 2
    out = _last_json(proc.stdout)
    assert out["ok"] is False and "no such data file" in out["error"]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_info_human_output_and_label_sets(shared_data, capsys):
    assert cli.main(["info", str(shared_data / "uracil.npz"), "--labels", "md17", "--frames", "::100"]) == 0
    text = capsys.readouterr().out
    assert "C4H4N2O2: 50 frames x 12 atoms" in text and "labels: md17" in text and "kcal/mol" in text
    assert not text.lstrip().startswith("{")


def test_unknown_label_set_is_an_expected_error(shared_data, capsys):
    code = cli.main(["info", str(shared_data / "uracil.npz"), "--labels", "dft", "--json"])
    captured = capsys.readouterr()
    assert code == 2
    out = _last_json(captured.out)
    assert out["error_type"] == "LabelSetError" and "available: rmd17, md17" in out["error"]


def test_usage_error_with_json(capsys):
    assert cli.main(["info", "--json"]) == 2
    out = _last_json(capsys.readouterr().out)
    assert out["ok"] is False and "required: DATA" in out["error"]


def test_convert_to_extxyz_and_back(shared_data, tmp_path, capsys):
    dest = tmp_path / "eth.extxyz"
    code = cli.main(["convert", str(shared_data / "ethanol.npz"), str(dest), "--frames", "::500", "--json"])
    out = _last_json(capsys.readouterr().out)
    assert code == 0 and out["ok"] and out["n_frames"] == 10 and out["format"] == "extxyz"
    assert out["written_units"]["energy"] == "eV"
    src = load_trajectory(shared_data / "ethanol.npz", frames="::500")
    back = load_trajectory(dest)
    np.testing.assert_array_equal(back.R, src.R)
    np.testing.assert_allclose(back.E, src.E, rtol=1e-15)
    np.testing.assert_allclose(back.F, src.F, rtol=1e-14, atol=1e-13)


def test_convert_unknown_extension(shared_data, tmp_path, capsys):
    assert cli.main(["convert", str(shared_data / "ethanol.npz"), str(tmp_path / "x.pdb"), "--json"]) == 2
    assert "supported extensions" in _last_json(capsys.readouterr().out)["error"]


def test_register_adds_a_command(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_REGISTRY", dict(cli._REGISTRY))

    def add(p):
        p.add_argument("n", type=int)

    def run(args):
        if args.n < 0:
            raise cli.CLIError(f"n must be >= 0, got {args.n}")  # a user error: exit 2
        return {"square": args.n**2, "array": np.arange(2)}

    cli.register("square", "square a number", add, run)
    with pytest.raises(ValueError, match="already registered"):
        cli.register("square", "again", add, run)
    assert cli.main(["square", "7", "--json"]) == 0
    assert _last_json(capsys.readouterr().out) == {"ok": True, "command": "square", "square": 49, "array": [0, 1]}
    assert cli.main(["square", "--", "-3"]) == 2
    assert "n must be >= 0, got -3" in capsys.readouterr().err


def test_simulate_tiny_benzene_run(repo_root, tmp_path):
    """Five GFN2-xTB steps of benzene written as an sGDML file (needs aff_app.io.simulate and tblite)."""
    dest = tmp_path / "benzene.npz"
    proc = _run(["simulate", "benzene", "--steps", "5", "--equilibration", "0", "--seed", "1",
                 "--out", str(dest), "--json"], repo_root)
    assert proc.returncode == 0, proc.stderr
    out = _last_json(proc.stdout)
    assert out["ok"] and out["n_frames"] == 5 and out["n_atoms"] == 12 and out["formula"] == "C6H6"
    traj = load_trajectory(dest)
    assert traj.n_frames == 5 and traj.has_labels
    assert np.all(np.isfinite(traj.F)) and traj.summary()["max_abs_force"] > 0
    assert traj.provenance.settings["seed"] == 1  # simulation settings travel in the file

"""One exception root for user errors (aff_app.errors.AFFError): a bug is never reported as the user's."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path


import aff_app
from aff_app import cli
from aff_app.errors import AFFError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "benzene.npz"

#: Exception classes that are deliberately not user errors, and why.
NOT_USER_ERRORS = {
    "aff_app.cli._UsageError": "argparse's complaint, re-raised at once as CLIError (an AFFError)",
    "aff_app.parallel.TaskFailedError": "a task that raised a bug (its user-error twin, TaskUserError, is an AFFError)",
}


def _library_exceptions() -> dict[str, type]:
    found = {}
    for mod in pkgutil.walk_packages(aff_app.__path__, "aff_app."):
        if mod.name == "aff_app.__main__":
            continue
        module = importlib.import_module(mod.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == mod.name:
                found[f"{mod.name}.{name}"] = obj
    return found


def test_every_library_error_is_a_user_error_under_one_root():
    found = _library_exceptions()
    errors = {k: v for k, v in found.items() if k.rsplit(".", 1)[1].endswith("Error")}
    assert len(errors) >= 40, sorted(errors)  # the scan found the library's classes
    stray = sorted(k for k, v in errors.items() if not issubclass(v, AFFError) and k not in NOT_USER_ERRORS)
    assert not stray, f"user errors must derive from AFFError: {stray}"
    # the conventional bases are kept, so `except ValueError` callers still work
    from aff_app.gp.budget import ComputeBudgetError
    from aff_app.io.errors import DataError, DataFileNotFoundError

    assert issubclass(DataError, ValueError) and issubclass(DataFileNotFoundError, FileNotFoundError)
    assert issubclass(ComputeBudgetError, MemoryError)


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_an_injected_bug_is_reported_as_a_bug_not_as_the_users_error(monkeypatch, capsys):
    import aff_app.io.validation as validation

    for exc in (KeyError("boom"), ValueError("boom"), TypeError("boom")):
        def broken(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(validation, "validate_trajectory", broken)
        code = cli.main(["info", str(SAMPLE), "--json"])
        out, err = capsys.readouterr()
        assert code == 1, (exc, out)
        last = _last_json(out)
        assert last["ok"] is False and last["bug"] is True and last["error_type"] == type(exc).__name__
        assert "a bug in aff_app" in last["error"]
        assert "Traceback (most recent call last)" in err  # the bug's traceback, for the report
    monkeypatch.undo()
    # the same command on a missing file: the user's error, exit 2, no traceback
    code = cli.main(["info", str(SAMPLE.with_name("missing.npz")), "--json"])
    out, err = capsys.readouterr()
    last = _last_json(out)
    assert code == 2 and last["ok"] is False and "bug" not in last and "Traceback" not in err


def test_a_user_error_from_a_fresh_process_exits_2_with_one_json_object(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "aff_app", "info", str(tmp_path / "nothing.npz"), "--json"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and json.loads(lines[0])["error_type"] == "DataFileNotFoundError"
    assert "Traceback" not in proc.stderr


def _train_with(monkeypatch, train):
    """The Train page on the benzene sample with ``pipeline.train`` replaced, after pressing Train (fixed γ, λ)."""
    from streamlit.testing.v1 import AppTest

    from aff_app.io.files import load_trajectory
    from aff_app.ui import state
    from aff_app.workflows import pipeline

    monkeypatch.setattr(pipeline, "train", train)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state[state.TRAJECTORY] = load_trajectory(SAMPLE)
    at.session_state[state.DEFAULT_SAMPLE_TRIED] = True
    at.switch_page("pages/train.py").run()
    at.radio(key=state.TRAIN_HYPER).set_value("fixed").run()
    return at.button(key=state.TRAIN_RUN).click().run()


def test_the_app_shows_a_bug_as_a_bug(monkeypatch, fresh_streamlit_cache):
    """A bug inside training surfaces as an exception on the page, not as "Training failed: <your input>"."""

    def broken(*args, **kwargs):
        raise KeyError("an internal bug")

    at = _train_with(monkeypatch, broken)
    assert at.exception and "an internal bug" in at.exception[0].value
    assert not any("Training failed" in e.value for e in at.error)


def test_user_errors_in_the_app_are_messages(monkeypatch, fresh_streamlit_cache):
    from aff_app.gp.force import FactorizationError

    def refused(*args, **kwargs):
        raise FactorizationError("Cholesky of PE set 0 failed with λ = 1e-12: raise λ")

    at = _train_with(monkeypatch, refused)
    assert not at.exception
    assert any("Training failed" in e.value and "raise λ" in e.value for e in at.error)

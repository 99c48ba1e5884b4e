"""Run the peer: the reference GDML/sGDML implementation (the ``sgdml`` package).

The peer is optional (``requirements-peer.txt``; ``../shared/docs/peer_sgdml.md``
says why it lives apart): nothing here imports it at module level. The
helpers that need it raise :class:`PeerUnavailableError` with the install
command when it is missing.

* :func:`write_sgdml_dataset` writes frames as an sGDML dataset (``type='d'``,
  kcal/mol and Å, with the fingerprint ``md5`` that ``sgdml`` checks); it does
  not need the package.
* :func:`sgdml_memory_bytes`, :func:`sgdml_time_seconds` and
  :func:`check_sgdml_fits` say, before anything runs, whether ``sgdml all`` at
  M training frames can finish on this machine: its analytic solver holds
  several copies of the (3MN)² kernel (``SGDML_COPIES``) and the fallback
  solvers more, so runs whose kernels do not fit are skipped with the numbers.
* :func:`run_sgdml` runs ``python -m sgdml.cli all`` (its permutation search,
  σ grid with validation and model selection: the package used as it comes)
  on exactly the given training frames, in a subprocess with a time limit, and
  returns a :class:`PeerRun` (wall time, model path, selected σ, σ trials).
* :func:`sgdml_predict` loads the model (plain arrays only: its pickled
  error dictionaries are skipped) and predicts energies and forces with
  ``sgdml.predict.GDMLPredict``.

Units: positions Å, energies kcal/mol, forces kcal/mol/Å (sGDML's own).
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from aff_app.errors import AFFError
from aff_app.gp.budget import physical_memory_bytes
from aff_app.io.writers import sgdml_dataset_md5

__all__ = [
    "PeerError",
    "PeerUnavailableError",
    "PeerRun",
    "INSTALL_HINT",
    "SGDML_COPIES",
    "MEMORY_FRACTION",
    "require_sgdml",
    "peer_available",
    "peer_status",
    "write_sgdml_dataset",
    "sgdml_memory_bytes",
    "sgdml_time_seconds",
    "check_sgdml_fits",
    "measure_cholesky_rate",
    "run_sgdml",
    "load_sgdml_model",
    "sgdml_predict",
]

#: What to run when the peer is missing.
INSTALL_HINT = "pip install torch==2.13.0 && pip install -r requirements-peer.txt"
#: Kernel copies ``sgdml`` holds at peak: its analytic solver estimates 3 (K and its factors), and when
#: the Cholesky fails it falls back to an LU solve that holds more (docs/peer_sgdml.md: runs died there).
SGDML_COPIES = 4
#: Share of physical memory a peer run may plan to use.
MEMORY_FRACTION = 0.85
#: σ trials assumed by the time estimate when no pilot run says how many the package needs.
DEFAULT_SIGMA_TRIALS = 6
#: How often a running ``sgdml all`` reports progress (and can be cancelled), s.
POLL_S = 1.0
#: Dense Cholesky rate assumed when none is measured (flop/s; 2-core machine, benchmarks/bench_forces.py).
DEFAULT_CHOLESKY_RATE = 2.0e10

Progress = Callable[[float, str], None]


class PeerError(AFFError, RuntimeError):
    """A peer run that failed or cannot run (the message says why, with numbers)."""


class PeerUnavailableError(PeerError):
    """The optional ``sgdml`` package (or its torch dependency) is not installed."""


def _noop(fraction: float, message: str) -> None:
    return None


def require_sgdml(submodule: str = "sgdml") -> Any:
    """Import ``sgdml`` (or one of its submodules) lazily.

    Raises
    ------
    PeerUnavailableError
        When the package or torch is missing (sgdml 1.0.3 imports torch at
        module level and fails with a NameError without it), with the install
        command.
    """
    # sgdml's import sets up logging handlers under which torch's import announces each
    # kernel DSL it registers ("Successfully registered DSL: triton", twice per DSL) at INFO:
    # chatter in every reproduction log, nothing a user acts on
    logging.getLogger("torch._native.dsl_registry").setLevel(logging.WARNING)
    try:
        return importlib.import_module(submodule)
    except (ImportError, NameError) as exc:
        raise PeerUnavailableError(
            f"the reference sGDML package is not available ({type(exc).__name__}: {exc}); it is optional — "
            f"install it with `{INSTALL_HINT}` (see requirements-peer.txt)"
        ) from None


@functools.lru_cache(maxsize=1)
def peer_status() -> str | None:
    """None when ``sgdml`` imports; else the :class:`PeerUnavailableError` message (found once per process:
    the import brings torch in, seconds the first time)."""
    try:
        require_sgdml("sgdml.predict")
    except PeerUnavailableError as exc:
        return str(exc)
    return None


def peer_available() -> bool:
    """True when ``sgdml`` and its dependencies import."""
    try:
        require_sgdml("sgdml.predict")
    except PeerUnavailableError:
        return False
    return True


# ---------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------
def write_sgdml_dataset(path, name: str, R, z, E, F, *, theory: str = "unknown") -> Path:
    """Write frames as an sGDML dataset that ``sgdml`` reads.

    Parameters
    ----------
    path : path-like
        Output ``.npz`` (used as given).
    name, theory : str
        Dataset name and level of theory (sgdml prints them).
    R : (M, N, 3) Å;  z : (N,);  E : (M,) or (M, 1) kcal/mol;  F : (M, N, 3) kcal/mol/Å

    Returns
    -------
    Path
        The file, with ``md5`` equal to ``sgdml.utils.io.dataset_md5`` of its arrays.
    """
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    R = np.ascontiguousarray(R, dtype=np.float64)
    F = np.ascontiguousarray(F, dtype=np.float64)
    E = np.ascontiguousarray(E, dtype=np.float64).reshape(-1, 1)
    m, n = R.shape[0], z.size
    if R.shape != (m, n, 3) or F.shape != R.shape or E.shape != (m, 1):
        raise PeerError(f"sGDML dataset needs R and F of shape (M, {n}, 3) and E of M values; "
                        f"got R {R.shape}, F {F.shape}, E {E.shape}")
    arrays = {
        "type": np.array("d"), "name": np.array(str(name)), "theory": np.array(str(theory)),
        "R": R, "z": z, "E": E, "F": F, "r_unit": np.array("Ang"), "e_unit": np.array("kcal/mol"),
        "md5": np.array(sgdml_dataset_md5(z, R, E, F).encode("ascii")),  # sgdml stores its md5 as bytes
    }
    path = Path(path)
    with open(path, "wb") as fh:  # a file object: np.savez would append '.npz' to a bare name
        np.savez(fh, **arrays)
    return path


# ---------------------------------------------------------------------------
# will it fit?
# ---------------------------------------------------------------------------
def sgdml_memory_bytes(n_train: int, n_atoms: int, *, copies: int = SGDML_COPIES) -> int:
    """Peak memory of ``sgdml all`` with its analytic solver: ``copies`` × 8 (3MN)² bytes."""
    side = 3 * int(n_train) * int(n_atoms)
    return int(copies) * 8 * side * side


def sgdml_time_seconds(
    n_train: int,
    n_atoms: int,
    *,
    n_perms: int = 1,
    pilot: "PeerRun | None" = None,
    sigma_trials: int | None = None,
    cholesky_rate: float = DEFAULT_CHOLESKY_RATE,
) -> float:
    """Rough wall time of ``sgdml all`` at M = ``n_train`` (seconds).

    Each σ trial factors one (3MN)² kernel ((3MN)³/3 flops at
    ``cholesky_rate``) after assembling it (∝ M² N² S). Without a pilot run
    the assembly is taken at 2 GB/s per permutation; with a ``pilot`` (a
    finished smaller run), the pilot's time less its factorisations is scaled
    by (M / M_pilot)² and the pilot's σ trial count is used.
    """
    m, n = int(n_train), int(n_atoms)
    side = 3 * m * n
    if sigma_trials:
        trials = int(sigma_trials)
    elif pilot is not None and pilot.sigma_trials:
        # a larger M may need more σ trials than the pilot stopped after
        trials = max(int(pilot.sigma_trials), DEFAULT_SIGMA_TRIALS // 2)
    else:
        trials = DEFAULT_SIGMA_TRIALS
    chol = trials * side**3 / 3.0 / cholesky_rate
    if pilot is not None and pilot.ok and pilot.wall_s is not None:
        p_side = 3 * pilot.n_train * n
        p_chol = (pilot.sigma_trials or trials) * p_side**3 / 3.0 / cholesky_rate  # what the pilot factored
        rest = max(pilot.wall_s - p_chol, 0.0) * (m / pilot.n_train) ** 2
        return float(chol + rest)
    return float(chol + trials * 8.0 * side * side * max(int(n_perms), 1) / 2e9 + 30.0)


def check_sgdml_fits(
    n_train: int,
    n_atoms: int,
    *,
    memory_bytes: int | None = None,
    time_limit_s: float | None = None,
    time_estimate_s: float | None = None,
) -> tuple[bool, str]:
    """Whether ``sgdml all`` at M = ``n_train`` fits this machine, and why not.

    Parameters
    ----------
    memory_bytes : int, optional
        Memory the run may use (default: ``MEMORY_FRACTION`` of physical memory).
    time_limit_s, time_estimate_s : float, optional
        Refuse when the estimate exceeds the limit.

    Returns
    -------
    ok : bool
    reason : str
        Empty when ok; else the numbers (kernel side, GB needed and available, or seconds).
    """
    budget = int(MEMORY_FRACTION * physical_memory_bytes()) if memory_bytes is None else int(memory_bytes)
    need = sgdml_memory_bytes(n_train, n_atoms)
    side = 3 * int(n_train) * int(n_atoms)
    if need > budget:
        return False, (f"skipped at M = {n_train}: its {side}×{side} kernel needs ~{need / 2**30:.1f} GB at peak "
                       f"({SGDML_COPIES} copies) but {budget / 2**30:.1f} GB may be used on this machine")
    if time_limit_s is not None and time_estimate_s is not None and time_estimate_s > time_limit_s:
        return False, (f"skipped at M = {n_train}: estimated {time_estimate_s / 60:.0f} min exceeds the "
                       f"{time_limit_s / 60:.0f} min limit")
    return True, ""


def measure_cholesky_rate(n: int = 3000, repeats: int = 2) -> float:
    """Dense Cholesky rate of this machine (flop/s, best of ``repeats``), for time estimates."""
    import scipy.linalg

    rng = np.random.default_rng(0)
    A = rng.normal(size=(n, 64))
    A = A @ A.T + n * np.eye(n)
    best = np.inf
    for _ in range(repeats):
        B = A.copy()
        t = time.perf_counter()
        scipy.linalg.cholesky(B, lower=True, overwrite_a=True, check_finite=False)
        best = min(best, time.perf_counter() - t)
    return n**3 / 3.0 / max(best, 1e-9)


# ---------------------------------------------------------------------------
# running it
# ---------------------------------------------------------------------------
@dataclass
class PeerRun:
    """One ``sgdml all`` run.

    Attributes
    ----------
    n_train : int
        M, training frames.
    ok : bool
        True when a model was written.
    wall_s : float or None
        Wall time of the whole ``sgdml all`` process (task creation with its
        permutation search, σ trials with validation, selection), s.
    model_path : Path or None
    reason : str
        Why it did not run or failed (empty when ok).
    sigma : float or None
        The selected σ (the package's kernel length scale).
    sigma_trials : int
        σ values trained before it stopped.
    sigma_on_edge : bool
        The package warned that the selected σ lies on its grid's boundary.
    n_perms : int or None
        Symmetries it found.
    solver : str or None
        'analytic' or 'cg'.
    command : list of str
    log_tail : str
        Last lines of its output (carriage returns split, colours removed).
    """

    n_train: int
    ok: bool
    wall_s: float | None = None
    model_path: Path | None = None
    reason: str = ""
    sigma: float | None = None
    sigma_trials: int = 0
    sigma_on_edge: bool = False
    n_perms: int | None = None
    solver: str | None = None
    command: list = field(default_factory=list)
    log_tail: str = ""

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return {
            "n_train": self.n_train, "ok": self.ok, "wall_s": self.wall_s,
            "model_path": None if self.model_path is None else str(self.model_path),
            "reason": self.reason, "sigma": self.sigma, "sigma_trials": self.sigma_trials,
            "sigma_on_edge": self.sigma_on_edge, "n_perms": self.n_perms, "solver": self.solver,
            "command": list(self.command),
        }


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _clean_log(text: str) -> list[str]:
    """sgdml's output as lines: progress lines end in carriage returns, colours are ANSI codes."""
    lines = _ANSI.sub("", text.replace("\r", "\n")).splitlines()
    return [ln.rstrip() for ln in lines if ln.strip() and not re.match(r"^\s*\[\s*\d+%\]", ln)]


_EXCEPTION_LINE = re.compile(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Interrupt): ")


def _failure_text(lines: Sequence[str]) -> str:
    """The exception a failed run ended with ('numpy.linalg.LinAlgError: Matrix is singular.'), else its last lines."""
    for ln in reversed(lines[-20:]):
        if _EXCEPTION_LINE.match(ln):
            return ln.strip()
    return " | ".join(ln.strip() for ln in lines[-3:])


def _parse_log(lines: Sequence[str]) -> dict:
    out: dict[str, Any] = {"sigma_trials": sum("Validation errors" in ln for ln in lines)}
    out["sigma_on_edge"] = any("lies on the boundary" in ln for ln in lines)
    for ln in lines:
        m = re.search(r"found (\d+) symmetries", ln)
        if m:
            out["n_perms"] = int(m.group(1))
        if "Using analytic solver" in ln:
            out["solver"] = "analytic"
        elif "Using iterative solver" in ln:
            out["solver"] = "cg"
    return out


def run_sgdml(
    workdir,
    train_path,
    valid_path,
    n_train: int,
    n_valid: int,
    *,
    timeout_s: float = 1800.0,
    n_atoms: int | None = None,
    memory_bytes: int | None = None,
    sigmas: str | None = None,
    gdml: bool = False,
    max_processes: int = 2,
    model_name: str | None = None,
    progress: Progress | None = None,
    expected_s: float | None = None,
) -> PeerRun:
    """Run ``sgdml all`` on exactly the frames of ``train_path``.

    Parameters
    ----------
    workdir : path-like
        Where sgdml writes its task and model files.
    train_path, valid_path : path-like
        sGDML datasets (:func:`write_sgdml_dataset`); the training file holds
        exactly ``n_train`` frames, so sgdml trains on all of them; the
        validation file ``n_valid`` frames (its σ selection). sgdml's own test
        step is skipped (no unused frames): test with :func:`sgdml_predict`.
    timeout_s : float
        Wall-clock limit; a run past it is killed and reported as not finished.
    n_atoms : int, optional
        When given, the memory pre-check runs first and a run that cannot fit
        is skipped (``ok=False`` with the reason) without starting.
    memory_bytes : int, optional
        Memory the run may use (default ``MEMORY_FRACTION`` of physical memory).
    sigmas : str, optional
        sgdml's σ grid (``-s``, e.g. ``'2:2:30'``); default its own ``10:10:100``.
    gdml : bool
        No symmetries (``--gdml``).
    max_processes : int
        sgdml's ``-p``.
    progress : callable(fraction, message), optional
        Called every ``POLL_S`` seconds while the package runs (fraction: of the time limit); when it
        raises (a cancel), the package's processes are killed and the exception propagates.
    expected_s : float, optional
        Expected wall time (:func:`sgdml_time_seconds`): the progress fraction then approaches 1 as
        1 − exp(−t / expected) rather than t / ``timeout_s``.

    Returns
    -------
    PeerRun

    Raises
    ------
    PeerUnavailableError
        When sgdml is not installed (checked before anything runs).
    """
    require_sgdml("sgdml.cli")
    workdir = Path(workdir).resolve()
    train_path, valid_path = Path(train_path).resolve(), Path(valid_path).resolve()
    m = int(n_train)
    if n_atoms is not None:
        ok, reason = check_sgdml_fits(m, n_atoms, memory_bytes=memory_bytes)
        if not ok:
            return PeerRun(n_train=m, ok=False, reason=reason)
    model = workdir / (model_name or f"sgdml_model_{m}.npz")
    if model.exists():
        model.unlink()
    cmd = [sys.executable, "-m", "sgdml.cli", "all", str(train_path), str(m), str(int(n_valid)),
           "-v", str(valid_path), "--cpu", "-o", "-p", str(int(max_processes)), "--model_file", str(model)]
    if sigmas:
        cmd += ["-s", *str(sigmas).split()]
    if gdml:
        cmd.append("--gdml")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(int(max_processes))))
    progress = progress or _noop
    t = time.perf_counter()
    # its own session, so that a run past the limit is ended with the worker processes it started
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    while True:
        # wait in short slices: each reports progress, and a progress callback that raises (the app's
        # Cancel) ends the package's processes before the exception travels on
        elapsed = time.perf_counter() - t
        try:
            stdout, stderr = proc.communicate(timeout=max(min(POLL_S, timeout_s - elapsed), 0.01))
            break
        except subprocess.TimeoutExpired:
            elapsed = time.perf_counter() - t
            if elapsed >= timeout_s:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
                lines = _clean_log((stdout or "") + "\n" + (stderr or ""))
                return PeerRun(n_train=m, ok=False, wall_s=time.perf_counter() - t,
                               reason=f"did not finish within {timeout_s:.0f} s (stopped)",
                               command=cmd, log_tail="\n".join(lines[-5:]), **_parse_log(lines))
            try:
                frac = (1.0 - math.exp(-elapsed / expected_s)) if expected_s else elapsed / timeout_s
                progress(min(frac, 0.99), f"sgdml all running ({elapsed:.0f} s"
                         + (f", about {expected_s:.0f} s expected)" if expected_s else ")"))
            except BaseException:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise
    wall = time.perf_counter() - t
    lines = _clean_log(stdout + "\n" + stderr)
    parsed = _parse_log(lines)
    tail = "\n".join(lines[-5:])
    if proc.returncode != 0 or not model.exists():
        killed = proc.returncode in (-9, 137)
        why = "killed (out of memory?)" if killed else f"failed (exit {proc.returncode})"
        return PeerRun(n_train=m, ok=False, wall_s=wall, reason=f"{why}: {_failure_text(lines)}",
                       command=cmd, log_tail=tail, **parsed)
    sigma = None
    try:
        with np.load(model, allow_pickle=False) as d:
            sigma = float(d["sig"])
    except (KeyError, ValueError, OSError):
        pass
    return PeerRun(n_train=m, ok=True, wall_s=wall, model_path=model, sigma=sigma, command=cmd, log_tail=tail,
                   **parsed)


def load_sgdml_model(path) -> dict:
    """The arrays of an sgdml model file, without pickle.

    sgdml stores its error summaries (``f_err``, ``e_err``, ``md5_test``) as
    pickled objects; prediction does not need them, so they are skipped
    rather than unpickled.
    """
    out = {}
    with np.load(path, allow_pickle=False) as d:
        for key in d.files:
            try:
                out[key] = d[key]
            except ValueError:  # an object array: refused, never unpickled
                continue
    if "alphas_F" not in out or "R_desc" not in out:
        raise PeerError(f"{path} is not an sgdml model (keys: {', '.join(sorted(out))})")
    return out


def sgdml_predict(model_path, R, *, batch_size: int = 200, max_processes: int = 2,
                  progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Energies and forces of an sgdml model at configurations ``R``.

    Parameters
    ----------
    model_path : path-like
        A model written by ``sgdml all``.
    R : (B, N, 3) Å

    Returns
    -------
    E : (B,) kcal/mol
    F : (B, N, 3) kcal/mol/Å
    """
    predict_mod = require_sgdml("sgdml.predict")
    progress = progress or _noop
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 2:
        R = R[None]
    model = load_sgdml_model(model_path)
    n = int(np.asarray(model["z"]).size)
    if R.ndim != 3 or R.shape[1:] != (n, 3):
        raise PeerError(f"positions must have shape (B, {n}, 3) for this sgdml model, got {R.shape}")
    gdml = predict_mod.GDMLPredict(model, max_processes=max_processes)
    B = R.shape[0]
    E = np.zeros(B)
    F = np.zeros_like(R)
    for s in range(0, B, batch_size):
        e = min(s + batch_size, B)
        eb, fb = gdml.predict(R[s:e].reshape(e - s, -1))
        E[s:e] = np.asarray(eb).reshape(-1)
        F[s:e] = np.asarray(fb).reshape(e - s, n, 3)
        progress(e / B, f"sgdml predicted {e}/{B} frames")
    return E, F

"""Force GPs: AFF (one GP per PE set) and GDML/sGDML (one set of all atoms).

method.md "AFF force model": PE set i with l_i atoms stacks the forces of its
atoms over the M training frames, F_i (3·M·l_i values, ordered frame, atom,
component) and

    F_i ~ N(0, σ_i² (R_i + λ I)),   σ̂_i² = F_iᵀ (R_i + λI)⁻¹ F_i / (3 M l_i)
    mean at x*:  F̂_i(x*) = R_{*,i}ᵀ (R_i + λI)⁻¹ F_i
    covariance:  σ̂_i² ( R_i(x*, x*) − R_{*,i}ᵀ (R_i + λI)⁻¹ R_{*,i} )

γ and λ are shared by the sets. GDML = one set holding all atoms with the plain
kernel; sGDML = the same with the PS kernel over the detected permutation group
(method.md "Modes that fall out of the same code"). AFF uses the PS kernel over
the group too (that is what makes predictions equivariant under swapping atoms
of one PE set); with a trivial group it is the plain kernel.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.linalg
import scipy.special

from aff_app.errors import AFFError
from aff_app import __version__
from aff_app.gp.budget import SOLVERS, check_budget, default_budget_bytes, estimate_cost
from aff_app.gp.hyper import search
from aff_app.gp.record import Calibration, FitRecord, LamCheck, SearchRecord, SolverRecord
from aff_app.gp.fast import MeanPredictor
from aff_app.gp.kernels import (CoefficientCache, ColumnTerms, Geometry, column_terms, force_covariance_sets,
                                force_covariance_self)

MODES = ("aff", "gdml", "sgdml")
#: Largest relative jitter tried when a Cholesky factorisation fails.
MAX_JITTER_STEPS = 4
#: Largest kernel side eigendecomposed during the hyperparameter search.
MAX_SEARCH_SIDE = 2400
#: Fewest frames the search uses when the permutation group is large.
MIN_SEARCH_FRAMES = 30
#: Fewest training frames whose exact leave-one-frame-out predictions calibrate σ̂² (calibrate='loo').
LOO_FRAMES = 40
#: The one smaller nugget the λ refinement tries (refine_lam=True): λ/16, 1.2 decades below the search's λ.
LAM_REFINE_FACTOR = 1.0 / 16.0
#: ... and uses it only when it lowers the leave-one-out error by more than this fraction (a
#: finite-sample tie keeps the likelihood's λ: noisy labels gave differences of ±0.5%).
LAM_REFINE_MIN_GAIN = 0.02
#: The λ check judges on the smallest PE sets, at most this many ...
LAM_REFINE_MAX_SETS = 3
#: ... while their second factorisations cost at most this share of the fit's (at least one set).
#: One set was a noisy judge: MD17 uracil, M = 1600, its smallest set showed a 0.1% gain with
#: λ/16 while 11 of the 12 sets gained 1-10% and the test force MAE fell from 0.250 to 0.235.
LAM_REFINE_FLOP_SHARE = 0.25

Progress = Callable[[float, str], None]


class ModelError(AFFError, ValueError):
    """Invalid model input or model file (the message says what and where)."""


class FactorizationError(AFFError, np.linalg.LinAlgError):
    """Cholesky failed even after raising the jitter (message gives set, size and λ)."""


def _noop(fraction: float, message: str) -> None:
    return None


@dataclass
class ForcePrediction:
    """Predicted forces with their uncertainty, in kcal/mol/Å.

    Attributes
    ----------
    mean : ndarray, shape (B, N, 3)
        Posterior mean force.
    std : ndarray, shape (B, N, 3), or None
        Posterior standard deviation of the *latent* (noise-free) force; None for
        models without an interval (the DCF-style network, the sgdml package).
    noise_var : ndarray, shape (N,), or None
        σ̂_i² λ of each atom's set: the variance a new noisy observation adds.
    cov : ndarray, shape (B, N, 3, 3) or None
        Posterior 3×3 covariance of each atom's latent force.
    """

    mean: np.ndarray
    std: np.ndarray | None
    noise_var: np.ndarray | None
    cov: np.ndarray | None = None

    @property
    def has_interval(self) -> bool:
        return self.std is not None

    def std_observation(self) -> np.ndarray | None:
        """Standard deviation of a new noisy observation, shape (B, N, 3) (None without an interval)."""
        if self.std is None:
            return None
        return np.sqrt(self.std**2 + self.noise_var[None, :, None])

    def interval(self, level: float = 0.95, *, kind: str = "latent") -> tuple[np.ndarray, np.ndarray]:
        """Central interval at ``level`` (e.g. 0.95 → mean ± 1.96 sd).

        kind : 'latent' (the force itself) or 'observation' (a new noisy label).
        """
        from scipy.special import ndtri  # Φ⁻¹; scipy.stats costs ~0.45 s to import

        if not 0.0 < level < 1.0:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        if kind not in ("latent", "observation"):
            raise ValueError(f"kind must be 'latent' or 'observation', got {kind!r}")
        if self.std is None:
            raise ValueError("this model predicts no interval (means only)")
        sd = self.std if kind == "latent" else self.std_observation()
        h = ndtri(0.5 + level / 2.0) * sd
        return self.mean - h, self.mean + h


def check_positions(R, n_atoms: int) -> np.ndarray:
    """Positions as a float (B, N, 3) array (an (N, 3) frame becomes B = 1); bad shapes or values raise ModelError."""
    try:
        R = np.asarray(R, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"positions must be numeric: {exc}") from None
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[1:] != (n_atoms, 3):
        raise ModelError(f"positions must have shape (N, 3) or (B, N, 3) with N = {n_atoms} for this model, "
                         f"got {R.shape}")
    if not np.all(np.isfinite(R)):
        raise ModelError("positions contain NaN or infinite values")
    return R


class TrainedForces:
    """What every force model of the session shares (ours and the peers'): sizes, means-only
    prediction, and the model file's prefixed arrays.

    Subclasses are dataclasses with ``z`` (N,) and ``R_train`` (M, N, 3) and a
    ``predict(R, return_std=...)`` returning a :class:`ForcePrediction`; those written with
    ``to_arrays(prefix)`` read back through :meth:`_read_prefixed`.
    """

    #: Whether predictions carry an interval (the GPs); the peers' models say False.
    has_interval = True

    @property
    def n_train(self) -> int:
        return int(self.R_train.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.z.size)

    def predict_forces(self, R) -> np.ndarray:
        """Posterior mean forces only, shape (B, N, 3), kcal/mol/Å."""
        return self.predict(R, return_std=False).mean

    def save(self, target) -> None:
        """Write the model file (``.npz`` of plain arrays, a path or a binary file object)."""
        np.savez_compressed(target, **self.to_arrays())

    @classmethod
    def _read_prefixed(cls, d: dict, where: str, prefix: str, what: str):
        """``cls._from_arrays`` of the keys under ``prefix``; malformed content raises :class:`ModelError`."""
        try:
            return cls._from_arrays({k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}, where)
        except ModelError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, AttributeError) as exc:
            raise ModelError(f"{where}: malformed {what} ({type(exc).__name__}: {exc})") from None


@dataclass
class ForceModel(TrainedForces):
    """A fitted force GP (AFF, GDML or sGDML).

    Attributes
    ----------
    mode : {'aff', 'gdml', 'sgdml'}
    z : (N,) atomic numbers
    R_train : (M, N, 3) training positions, Å
    F_train : (M, N, 3) training forces, kcal/mol/Å
    train_idx : (M,) frame indices in the source trajectory
    pe_sets : list of int arrays (each set's atoms)
    perms : (S, N) permutations averaged in the kernel (identity only = plain)
    gamma : float, range in descriptor units (1/Å)
    lam : float, nugget
    sigma2 : (n_sets,) per-set variance σ̂_i², (kcal/mol)²
    alpha : list of (3 M l_i,) arrays, (R_i + λI)⁻¹ F_i
    jitter : list of float, extra diagonal added when a factorisation needed it
    record : FitRecord, typed provenance and timings (``aff_app.gp.record``): the
        search, λ check and calibration of the fit, and the data, split and
        symmetry the workflow recorded
    solver : {'dense', 'iterative'}
        How α was solved. 'iterative' (method.md "Iterative path"): conjugate gradients,
        no factor of the full kernels; the mean is eq. (26), the variance eq. (29) from the
        subset frames ``subset_idx`` (their factor is rebuilt after a load).
    subset_idx : (r,) int array or None
        The iterative model's subset of training frames (rows of ``R_train``).
    """

    mode: str
    z: np.ndarray
    R_train: np.ndarray
    F_train: np.ndarray
    train_idx: np.ndarray
    pe_sets: list
    perms: np.ndarray
    gamma: float
    lam: float
    sigma2: np.ndarray
    alpha: list
    jitter: list
    record: FitRecord = field(default_factory=FitRecord)
    solver: str = "dense"
    subset_idx: np.ndarray | None = None
    _chol: list | None = field(default=None, repr=False)
    _geom: Geometry | None = field(default=None, repr=False)
    _columns: ColumnTerms | None = field(default=None, repr=False)
    _mean: MeanPredictor | None = field(default=None, repr=False)

    # -- sizes -------------------------------------------------------------------
    @property
    def atom_to_set(self) -> np.ndarray:
        out = np.empty(self.n_atoms, dtype=np.int64)
        for k, s in enumerate(self.pe_sets):
            out[s] = k
        return out

    def _geometry(self) -> Geometry:
        if self._geom is None:
            self._geom = Geometry.from_positions(self.R_train)
        return self._geom

    def _factors(self) -> list:
        """Cholesky factors of R_i + (λ + jitter_i) I (recomputed after load).

        For an iterative model: the factors of the subset kernels R_II + λI (method.md (29)).
        """
        if self._chol is None and self.solver == "iterative":
            from aff_app.gp.iterative import subset_factors

            self._chol = subset_factors(self._geometry(), self.pe_sets, self.perms, self.gamma, self.lam,
                                        self.subset_idx)[0]
        if self._chol is None:
            Ks = force_covariance_sets(self._geometry(), self._geometry(), self.gamma, self.pe_sets, perms=self.perms,
                                       mirror=False)
            chol = []
            for k, K in enumerate(Ks):
                L = _cholesky_inplace(K, self.lam + self.jitter[k], restorable=False)
                if L is None:
                    raise FactorizationError(
                        f"re-factorising PE set {k} (size {K.shape[0]}) failed with λ = {self.lam:.3g} + "
                        f"jitter {self.jitter[k]:.3g}: the model file does not match its training data"
                    )
                chol.append(L)
            self._chol = chol
        return self._chol

    def _column_terms(self) -> ColumnTerms:
        """The training side of the kernel rows R_{*,i}, kept between predictions (MD predicts one frame a step)."""
        if self._columns is None:
            self._columns = column_terms(self._geometry(), self.pe_sets, self.perms)
        return self._columns

    # -- prediction ---------------------------------------------------------------
    def predict_mean(self, R) -> np.ndarray:
        """Posterior mean forces only, (B, N, 3) kcal/mol/Å, by eq. (26) (``aff_app.gp.fast``).

        The same numbers as ``predict(R, return_std=False).mean`` (to rounding: ~1e-9 relative, 1e-5
        for a model whose nugget sits at the floor, where α cancels by 10¹¹) without building kernel
        rows: an MD step of uracil at M = 1000 takes about half a millisecond.
        """
        return self.mean_predictor().forces(check_positions(R, self.n_atoms))

    def mean_predictor(self) -> MeanPredictor:
        """The precomputed terms of eq. (26), built on first use (``MeanPredictor.nbytes`` of memory)."""
        if self._mean is None:
            self._mean = MeanPredictor(self.R_train, self.pe_sets, self.perms, self.gamma, self.alpha)
        return self._mean

    def predict(self, R, *, return_std: bool = True, batch_size: int = 64, progress: Progress | None = None) -> ForcePrediction:
        """Predict forces at new configurations.

        Parameters
        ----------
        R : ndarray, shape (B, N, 3) or (N, 3), Å
        return_std : bool
            Compute the posterior standard deviations (needs the Cholesky factors).

        Returns
        -------
        ForcePrediction
        """
        R = check_positions(R, self.n_atoms)
        progress = progress or _noop
        if self.solver == "iterative":
            return self._predict_iterative(R, return_std, batch_size, progress)
        B, N = R.shape[0], self.n_atoms
        mean = np.zeros((B, N, 3))
        std = np.zeros((B, N, 3))
        cov = np.zeros((B, N, 3, 3)) if return_std else None
        chol = self._factors() if return_std else None
        Gt = self._geometry()
        for start in range(0, B, batch_size):
            sl = slice(start, min(start + batch_size, B))
            Gb = Geometry.from_positions(R[sl])
            b = sl.stop - sl.start
            Kstars = force_covariance_sets(Gb, Gt, self.gamma, self.pe_sets, perms=self.perms,
                                           columns=self._column_terms())
            priors = force_covariance_self(Gb, self.gamma, self.pe_sets, perms=self.perms) if return_std else None
            for k, (s, Ks) in enumerate(zip(self.pe_sets, Kstars)):
                l = s.size
                mean[sl, s, :] = (Ks @ self.alpha[k]).reshape(b, l, 3)
                if return_std:
                    v = scipy.linalg.solve_triangular(chol[k], Ks.T, lower=True, check_finite=False)
                    v = v.reshape(-1, b, l, 3)
                    # per-atom 3×3 posterior covariance: prior − vᵀv (method.md), times σ̂_i²
                    P = priors[k]  # (b, l, 3, l, 3)
                    idx = np.arange(l)
                    prior_blocks = P[:, idx, :, idx, :].transpose(1, 0, 2, 3)  # (b, l, 3, 3)
                    post = prior_blocks - np.einsum("nfic,nfid->ficd", v, v)
                    post *= self.sigma2[k]
                    cov[sl, s] = post
                    std[sl, s] = np.sqrt(np.maximum(np.einsum("ficc->fic", post), 0.0))
            progress(sl.stop / B, f"predicted {sl.stop}/{B} frames")
        noise = np.array([self.sigma2[k] * (self.lam + self.jitter[k]) for k in self.atom_to_set])
        return ForcePrediction(mean=mean, std=std, noise_var=noise, cov=cov)

    def _predict_iterative(self, R, return_std: bool, batch_size: int, progress) -> ForcePrediction:
        """An iterative model's prediction: mean by eq. (26), covariance by eq. (29) (subset frames)."""
        B, N = R.shape[0], self.n_atoms
        mean = self.predict_mean(R)
        std = np.zeros((B, N, 3))
        cov = np.zeros((B, N, 3, 3)) if return_std else None
        if return_std:
            from aff_app.gp.iterative import subset_variance

            empty = self.subset_idx is None or self.subset_idx.size == 0
            chol = None if empty else self._factors()
            GI = None if empty else self._geometry().take(self.subset_idx)
            if self._columns is None and not empty:
                self._columns = column_terms(GI, self.pe_sets, self.perms)
            for start in range(0, B, batch_size):
                sl = slice(start, min(start + batch_size, B))
                Gb = Geometry.from_positions(R[sl])
                priors = force_covariance_self(Gb, self.gamma, self.pe_sets, perms=self.perms)
                Kstars = None if empty else force_covariance_sets(Gb, GI, self.gamma, self.pe_sets,
                                                                  perms=self.perms, columns=self._columns)
                for k, s in enumerate(self.pe_sets):
                    post = subset_variance(None if empty else chol[k], None if empty else Kstars[k], priors[k])
                    post *= self.sigma2[k]
                    cov[sl, s] = post
                    std[sl, s] = np.sqrt(np.maximum(np.einsum("ficc->fic", post), 0.0))
                progress(sl.stop / B, f"predicted {sl.stop}/{B} frames")
        else:
            progress(1.0, f"predicted {B}/{B} frames")
        noise = np.array([self.sigma2[k] * (self.lam + self.jitter[k]) for k in self.atom_to_set])
        return ForcePrediction(mean=mean, std=std, noise_var=noise, cov=cov)

    # -- persistence -------------------------------------------------------------
    def save(self, path) -> None:
        """Write the model to ``.npz`` (plain arrays only, no pickle)."""
        sizes = np.array([s.size for s in self.pe_sets], dtype=np.int64)
        np.savez_compressed(
            path,
            format=np.array(FORCE_FORMAT),
            version=np.array(__version__),
            mode=np.array(self.mode),
            z=self.z,
            R_train=self.R_train,
            F_train=self.F_train,
            train_idx=self.train_idx,
            set_atoms=np.concatenate(self.pe_sets).astype(np.int64),
            set_sizes=sizes,
            perms=self.perms,
            gamma=np.array(self.gamma),
            lam=np.array(self.lam),
            sigma2=self.sigma2,
            alpha=np.concatenate(self.alpha),
            jitter=np.array(self.jitter, dtype=np.float64),
            info=np.array(json.dumps(self.record.to_dict(), default=_json_default)),
            # an iterative model (method.md "Iterative path"): the solver and its subset frames; files
            # without these keys (all written before it) are dense models
            **({"solver": np.array(self.solver), "subset_idx": np.asarray(self.subset_idx, np.int64)}
               if self.solver == "iterative" else {}),
        )

    @classmethod
    def load(cls, path) -> "ForceModel":
        """The force model of any model file (alone, or embedded in an energy model's file).

        Reads through :func:`aff_app.gp.persistence.load_model`, the one reader of model files.
        """
        from aff_app.gp.persistence import load_model

        return load_model(path)[0]

    @classmethod
    def from_arrays(cls, d: dict, *, where: str = "model") -> "ForceModel":
        """Validate the arrays of a saved model (any malformed content raises :class:`ModelError`)."""
        try:
            return cls._from_arrays(d, where)
        except ModelError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
            raise ModelError(f"{where}: malformed model data ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_arrays(cls, d: dict, where: str) -> "ForceModel":
        need = ["format", "mode", "z", "R_train", "F_train", "train_idx", "set_atoms", "set_sizes", "perms",
                "gamma", "lam", "sigma2", "alpha", "jitter", "info"]
        missing = [k for k in need if k not in d]
        if missing:
            raise ModelError(f"{where}: missing keys {missing}: not an aff_app model (no force model's arrays)")
        check_model_format(d, FORCE_FORMAT, where)
        z = np.asarray(d["z"], dtype=np.int64)
        n = z.size
        R, F = np.asarray(d["R_train"], float), np.asarray(d["F_train"], float)
        m = R.shape[0] if R.ndim == 3 else -1
        if R.shape != (m, n, 3) or F.shape != R.shape:
            raise ModelError(f"{where}: R_train {R.shape} / F_train {F.shape} do not match {n} atoms")
        sizes = np.asarray(d["set_sizes"], dtype=np.int64)
        atoms = np.asarray(d["set_atoms"], dtype=np.int64)
        if sizes.sum() != n or np.sort(atoms).tolist() != list(range(n)):
            raise ModelError(f"{where}: PE sets do not partition the {n} atoms")
        sets = np.split(atoms, np.cumsum(sizes)[:-1])
        alpha_all = np.asarray(d["alpha"], float)
        if alpha_all.size != 3 * m * n:
            raise ModelError(f"{where}: alpha has {alpha_all.size} values, expected 3·M·N = {3 * m * n}")
        alpha = np.split(alpha_all, np.cumsum(3 * m * sizes)[:-1])
        perms = np.asarray(d["perms"], dtype=np.int64)
        if perms.ndim != 2 or perms.shape[1] != n or any(sorted(p) != list(range(n)) for p in perms.tolist()):
            raise ModelError(f"{where}: perms must be permutations of {n} atoms, got shape {perms.shape}")
        mode = str(d["mode"])
        if mode not in MODES:
            raise ModelError(f"{where}: unknown mode {mode!r}")
        sigma2 = np.asarray(d["sigma2"], float)
        jitter = np.asarray(d["jitter"], float)
        if sigma2.shape != (len(sets),) or jitter.shape != (len(sets),):
            raise ModelError(f"{where}: sigma2/jitter must have one value per set ({len(sets)})")
        gamma, lam = float(d["gamma"]), float(d["lam"])
        if not (gamma > 0 and lam >= 0 and np.all(sigma2 > 0) and np.all(np.isfinite(alpha_all))):
            raise ModelError(f"{where}: invalid hyperparameters (γ={gamma}, λ={lam}, σ²={sigma2})")
        try:
            info = json.loads(str(d["info"]))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{where}: provenance is not valid JSON: {exc}") from exc
        if not isinstance(info, dict):
            raise ModelError(f"{where}: provenance must be a JSON object, got {type(info).__name__}")
        record = FitRecord.from_dict(info)
        solver = str(d["solver"]) if "solver" in d else "dense"
        subset = None
        if solver == "iterative":
            if "subset_idx" not in d:
                raise ModelError(f"{where}: an iterative model without its subset frames ('subset_idx')")
            subset = np.asarray(d["subset_idx"], dtype=np.int64).reshape(-1)
            if subset.size and (subset.min() < 0 or subset.max() >= m or np.unique(subset).size != subset.size):
                raise ModelError(f"{where}: subset_idx must hold distinct training frames 0..{m - 1}")
        elif solver != "dense":
            raise ModelError(f"{where}: unknown solver {solver!r}")
        return cls(mode=mode, z=z, R_train=R, F_train=F, train_idx=np.asarray(d["train_idx"], np.int64),
                   pe_sets=sets, perms=perms, gamma=gamma, lam=lam, sigma2=sigma2, alpha=alpha,
                   jitter=list(jitter), record=record, solver=solver, subset_idx=subset)


#: Format string written into every force-model file.
FORCE_FORMAT = "aff_app.ForceModel/1"


def read_model_npz(path) -> dict:
    """The arrays of a model file; never unpickles, and any damage raises :class:`ModelError`."""
    try:
        with np.load(path, allow_pickle=False) as d:
            return {k: d[k] for k in d.files}
    except FileNotFoundError:
        raise
    except MemoryError:
        raise ModelError(f"cannot read {path} as a model: it declares arrays too large for memory (damaged file)") from None
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, ValueError (pickle refused) ...
        # numpy tries pickle on anything that is not a zip: refused, never executed
        if isinstance(exc, ValueError) and "pickle" in str(exc).lower():
            raise ModelError(
                f"cannot read {path} as a model: it is not an .npz archive of plain arrays: it holds pickled "
                "(object) data, which is refused (unpickling can run arbitrary code)"
            ) from None
        detail = str(exc)[:200] or type(exc).__name__
        raise ModelError(
            f"cannot read {path} as a model: it is not an .npz archive of plain arrays, or it is truncated or "
            f"damaged [{type(exc).__name__}: {detail}]"
        ) from None


def check_model_format(d: dict, expected: str, where: str) -> None:
    """Refuse a model file of another kind or of a newer format version, saying which."""
    try:
        found = str(np.asarray(d["format"]).reshape(-1)[0]) if np.size(d["format"]) == 1 else repr(d["format"])
    except Exception:  # noqa: BLE001 - whatever the array holds, it is not our format
        found = "?"
    if found == expected:
        return
    kind, _, ver = expected.rpartition("/")
    fkind, _, fver = found.rpartition("/")
    if fkind == kind and fver.isdigit() and ver.isdigit() and int(fver) > int(ver):
        written = d.get("version")
        by = f" by aff_app {str(written)}" if written is not None else ""
        raise ModelError(
            f"{where}: this model was written{by} in format {found!r}, newer than the {expected!r} this aff_app "
            f"{__version__} reads: upgrade aff_app to load it, or retrain the model with this version"
        )
    raise ModelError(f"{where}: expected model format {expected!r}, found {found!r}; is this an aff_app model file?")


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


#: Above this side the factorisation is blocked here (left-looking, GEMM-based):
#: OpenBLAS 0.3.30's threaded dpotrf (the one numpy/scipy wheels ship) crashed
#: with a segmentation fault on some 17000-18000 sided matrices (benzene, M=1000).
BLOCKED_CHOLESKY_SIDE = 8192
CHOLESKY_BLOCK = 2048


def _copy_lower_to_upper(K: np.ndarray, strip: int = 1024) -> None:
    """K[i, j] = K[j, i] for j > i, in row strips (no n²-sized index arrays)."""
    n = K.shape[0]
    for r0 in range(0, n, strip):
        r1 = min(n, r0 + strip)
        K[r0:r1, r1:] = K[r1:, r0:r1].T
        B = K[r0:r1, r0:r1]
        iu = np.triu_indices(r1 - r0, 1)
        B[iu] = B.T[iu]


def _cholesky_inplace(K: np.ndarray, shift: float, *, restorable: bool = True) -> np.ndarray | None:
    """Factor K + shift·I in place, no n×n copy; returns L (read its lower triangle) or None.

    Only K's lower triangle (C order) is read, and L is written over it: the
    fit builds just that triangle (``force_covariance_sets(mirror=False)``).
    Small kernels: K.T is the same memory in Fortran order and LAPACK's dpotrf
    on its upper triangle (= K's lower triangle) gives U = Lᵀ in place. Large
    ones go through :func:`_blocked_cholesky`.

    On failure, with ``restorable`` (K complete and symmetric), K is restored
    from its intact upper triangle, so a retry needs no second n×n copy (for
    benzene at M = 1600 one copy is 6.6 GB); without it K is left overwritten
    and the caller rebuilds it.
    """
    from scipy.linalg.lapack import dpotrf

    if K.shape[0] > BLOCKED_CHOLESKY_SIDE:
        return _blocked_cholesky(K, shift, restorable=restorable)
    d0 = K.diagonal().copy()
    K[np.diag_indices_from(K)] += shift
    c, info = dpotrf(K.T, lower=0, clean=0, overwrite_a=1)
    if info == 0:
        if not np.shares_memory(c, K):  # dpotrf copied (should not happen for F-ordered input)
            return np.ascontiguousarray(np.asarray(c).T)
        return K
    if restorable:
        _copy_lower_to_upper(K.T)  # K's lower triangle from its untouched upper triangle
        K[np.diag_indices_from(K)] = d0
    return None


def _blocked_cholesky(K: np.ndarray, shift: float, nb: int = CHOLESKY_BLOCK, *,
                      restorable: bool = True) -> np.ndarray | None:
    """Left-looking blocked Cholesky of K + shift·I into K's lower triangle (C order).

    Per block column j: A11 −= L10 L10ᵀ, L11 = chol(A11) (LAPACK on an nb×nb
    copy), A21 −= L20 L10ᵀ, L21 = A21 L11⁻ᵀ. The flops (n³/3) are GEMMs on
    strided views. K's strictly upper triangle outside the diagonal blocks is
    never written; the diagonal blocks are saved, so a failure restores K.
    """
    n = K.shape[0]
    d0 = K.diagonal().copy()
    K[np.diag_indices(n)] += shift
    saved = []
    try:
        for j in range(0, n, nb):
            e = min(j + nb, n)
            saved.append(K[j:e, j:e].copy())
            A11 = K[j:e, j:e]
            if j > 0:
                A11 -= K[j:e, :j] @ K[j:e, :j].T
            L11 = scipy.linalg.cholesky(A11, lower=True, check_finite=False)
            K[j:e, j:e] = L11
            if e < n:
                A21 = K[e:, j:e]
                if j > 0:
                    A21 -= K[e:, :j] @ K[j:e, :j].T
                K[e:, j:e] = scipy.linalg.solve_triangular(L11, A21.T, lower=True, check_finite=False).T
        return K
    except np.linalg.LinAlgError:
        if not restorable:
            return None
        for k, B in enumerate(saved):
            j, e = k * nb, min(k * nb + nb, n)
            K[j:e, j:e] = B
            K[e:, j:e] = K[j:e, e:].T  # lower panel from the untouched upper triangle
        K[np.diag_indices(n)] = d0
        return None


def _cholesky_with_jitter(K: np.ndarray, lam: float, set_index: int, set_atoms, rebuild=None) -> tuple[np.ndarray, float]:
    """Factor K + λI in place, escalating a jitter a bounded number of times (ill-conditioned kernels).

    ``rebuild``: callable returning a fresh K, for a K holding only its lower
    triangle (a failed factorisation cannot be undone then); None: K is
    complete and is restored in place after a failure.
    """
    base = float(np.mean(np.diag(K)))
    jitter = 0.0
    for step in range(MAX_JITTER_STEPS + 1):
        L = _cholesky_inplace(K, lam + jitter, restorable=rebuild is None)
        if L is not None:
            return L, jitter
        jitter = base * 10.0 ** (-10 + 2 * step)
        if rebuild is not None and step < MAX_JITTER_STEPS:
            K = rebuild()
    raise FactorizationError(
        f"Cholesky of PE set {set_index} (atoms {list(map(int, set_atoms))}, size {K.shape[0]}) failed with "
        f"λ = {lam:.3g} even after adding jitter up to {jitter:.3g}: raise λ, or drop duplicate frames."
    )


def select_training_frames(n_frames: int, n_train: int, *, seed: int = 0, exclude=None) -> np.ndarray:
    """``n_train`` distinct frame indices drawn at random (sorted), avoiding ``exclude``."""
    pool = np.setdiff1d(np.arange(n_frames), np.asarray([] if exclude is None else exclude, dtype=np.int64))
    if n_train < 1 or n_train > pool.size:
        raise ModelError(f"cannot draw {n_train} training frames from {pool.size} available frames")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=n_train, replace=False))


def loo_frame_residuals(L: np.ndarray, alpha: np.ndarray, w: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact leave-one-frame-out residuals of the last ``q`` frames of one GP, from its Cholesky factor.

    With K = L Lᵀ the kernel plus nugget (unit variance), α = K⁻¹y and B the w
    rows of one frame (frame-major layout), the prediction of y_B from all
    other rows has (Rasmussen & Williams eq. 5.12, for a block)::

        y_B − μ_{−B} = [(K⁻¹)_BB]⁻¹ α_B,   cov = [(K⁻¹)_BB]⁻¹   (observation, ×σ²)

    For the trailing block T of the last q frames, L⁻¹ being lower triangular,
    (K⁻¹)_TT = (L_TT L_TTᵀ)⁻¹: one inverse of a (q·w)² triangle, (q/M)³ of the
    fit's Cholesky, instead of a solve against the whole factor per frame.

    Parameters
    ----------
    L : (n, n), factor in its lower triangle;  alpha : (n,);  w : rows per frame;  q : frames

    Returns
    -------
    r, var : ndarrays, shape (q·w,) — residuals (units of y) and their
        observation variances (kernel units; multiply by σ²), frames in order
    """
    n = L.shape[0]
    t = q * w
    if q < 1 or t > n:
        raise ModelError(f"need 1 <= q <= {n // w} frames for leave-one-out, got q = {q}")
    Y, info = scipy.linalg.lapack.dtrtri(np.array(L[n - t:, n - t:], order="F"), lower=1)  # L_TT⁻¹
    if info != 0:
        raise FactorizationError(f"the leave-one-out triangle (size {t}) is singular (dtrtri info {info})")
    Y = np.tril(Y)  # dtrtri leaves the (unused) upper triangle of its input as it was
    a = alpha[n - t:]
    r = np.empty(t)
    var = np.empty(t)
    for j in range(q):
        c = slice(j * w, (j + 1) * w)
        Yj = Y[j * w:, c]  # L_TT⁻¹ is lower triangular: zero above the frame's rows
        C = np.linalg.inv(Yj.T @ Yj)  # [(K⁻¹)_BB]⁻¹
        r[c] = C @ a[c]
        var[c] = np.diag(C)
    return r, var


def _probe_sets(sides, keep_factors: bool, peak_bytes: int, budget: int) -> list[int]:
    """The PE sets the λ check factors twice: the smallest, within LAM_REFINE_MAX_SETS, flop share and memory.

    ``sides``: kernel sides of the sets (3·M·l_i). Extra memory: a copy of the
    probe kernel being factored, and with ``keep_factors`` the probe sets'
    second factors until the choice. Returns [] when not even one fits.
    """
    order = sorted(range(len(sides)), key=lambda k: (sides[k], k))
    total = sum(float(n) ** 3 for n in sides)
    chosen: list[int] = []
    flops = 0.0
    for k in order[:LAM_REFINE_MAX_SETS]:
        if chosen and flops + float(sides[k]) ** 3 > LAM_REFINE_FLOP_SHARE * total:
            break
        # the copy of this set's kernel; with keep_factors also the chosen sets' second factors
        extra = 8 * (sides[k] ** 2 + (sum(sides[j] ** 2 for j in chosen) if keep_factors else 0))
        if peak_bytes + extra > budget:
            break
        chosen.append(k)
        flops += float(sides[k]) ** 3
    return chosen


def fit_force_model(
    R,
    F,
    z,
    *,
    mode: str = "aff",
    pe_sets=None,
    perms=None,
    gamma: float | None = None,
    lam: float | None = None,
    criterion: str = "likelihood",
    search_frames: int = 100,
    search_fraction: float = 0.25,
    calibrate: str | None = "loo",
    refine_lam: bool = True,
    keep_factors: bool = True,
    train_idx=None,
    budget_bytes: int | None = None,
    progress: Progress | None = None,
    record: FitRecord | None = None,
    seed: int = 0,
    solver: str = "auto",
    cg_tol: float | None = None,
    nystrom_frames: int | None = None,
    executor=None,
) -> ForceModel:
    """Fit a force GP on training frames.

    Parameters
    ----------
    R : (M, N, 3) Å; F : (M, N, 3) kcal/mol/Å; z : (N,)
    mode : 'aff' (one GP per PE set), 'gdml' (all atoms, plain kernel) or
        'sgdml' (all atoms, PS kernel).
    pe_sets : list of int arrays
        The PE sets (AFF); ignored by gdml/sgdml (one set of all atoms).
    perms : (S, N) int array
        Permutation group for the PS kernel (aff, sgdml); ignored by gdml.
    gamma, lam : float, optional
        Fix the hyperparameters (both given: no search). Otherwise γ and λ are
        chosen by ``criterion`` ('likelihood' or 'cv') on a random subset of
        the training frames (the search eigendecomposes dense kernels):
        max(``search_frames``, ``search_fraction``·M) frames, fewer for large
        permutation groups and capped so no search kernel exceeds
        MAX_SEARCH_SIDE rows. The fraction matters: the likelihood's γ grows and
        its λ shrinks with the density of the frames it sees (uracil, M = 400:
        100 frames give γ = 11, λ/scale = 2e-7, MAE 0.59 kcal/mol/Å; all 400
        give γ = 33, 2e-9, MAE 0.54), so a fixed-size subset under-fits and
        under-covers at large M; with a fixed fraction the search costs about
        one fit.
    calibrate : {'loo', None}
        'loo' (default): after the fit, scale every σ̂_i² by one factor s² so
        that the latent 95% intervals of the exact leave-one-frame-out
        predictions (:func:`loo_frame_residuals`) of the last
        max(LOO_FRAMES, M/8) training frames hold 95% of their reference force
        components: s = q95(|r| / sd) / 1.96, pooled over PE sets. The latent
        interval because it is the one PCI scores (the paper's definition)
        against reference forces that carry noise. None: method.md's
        profile-likelihood σ̂², which assumes the kernel is right; on rMD17 it
        gave 98–99% coverage for benzene and aspirin at small M (too wide) and
        94% for uracil. On draws from the GP itself with little label noise
        s ≈ 1; with noticeable noise the latent interval widens to cover the
        reference forces and the observation interval adds the nugget on top.
        Cost: (q/M)³ of the Cholesky (q/M ≤ 1/8 once M ≥ 320). The last
        frames, not random ones, because their block of L⁻¹ is the inverse of
        L's trailing triangle; frames drawn at random from a stationary
        trajectory (MD17, the app's split) make them as typical as any.
    refine_lam : bool
        When the search ran on a subset of the frames, check its λ on all M:
        the probe sets — the smallest PE sets, up to LAM_REFINE_MAX_SETS of
        them while their extra factorisations cost at most LAM_REFINE_FLOP_SHARE
        of the fit's (at least one) — are factored also with
        λ·LAM_REFINE_FACTOR, and that nugget is used for every set (shared λ,
        as in method.md) when the exact leave-one-frame-out predictions of the
        last max(LOO_FRAMES, M/8) frames of the probe sets, pooled, have a mean
        absolute error more than LAM_REFINE_MIN_GAIN smaller with it. Why: on nearly
        noise-free ab initio forces the subset's likelihood picks λ too large
        for the denser full set (rMD17 uracil, M = 400, 100 search frames:
        λ = 9.4e-10, test MAE 0.589 kcal/mol/Å; λ/16: 0.547; the search on all
        400 frames: 0.545), while on noisy labels (MD17 benzene) the leave-one-
        out error keeps the search's λ. Cost: one extra Cholesky per probe
        set, and a copy of a probe kernel while it runs (with keep_factors,
        the probe sets' second factors until the choice is made).
    keep_factors : bool
        Keep the Cholesky factors on the model (default), so predictive
        variances need no refactorisation. False (the CLI's ``train``, which
        writes the model and exits): the factors are dropped as soon as each
        set's weights and leave-one-out terms are taken, one kernel buffer is
        reused by every set (peak memory one kernel, not the sum; no page
        faults per set), and a later ``predict`` with intervals rebuilds them.
    budget_bytes : int, optional
        Memory budget (default ``AFF_MEMORY_BUDGET_GB`` or 60% of RAM); the fit is refused
        before any kernel is built when its estimate exceeds it.
    solver : {'auto', 'dense', 'iterative'}
        'dense': build and factor every PE set's kernel. 'iterative' (AFF only; method.md
        "Iterative path", :mod:`aff_app.gp.iterative`): preconditioned conjugate gradients on
        the matrix-free kernel, a Nyström preconditioner on a subset of frames sized to the
        budget, λ at least ``ITERATIVE_LAM_FLOOR``·5/(3γ²) (and γ searched for such λ), the predictive variance
        from the subset frames, its scale calibrated on held-out training frames; no λ check.
        'auto' (default): dense when its estimate fits the budget, else iterative (AFF; GDML
        and sGDML are refused as before). The choice and the CG iterations are in
        ``model.record.solver``.
    cg_tol : float, optional
        CG's relative residual (default ``aff_app.gp.iterative.CG_TOL``).
    nystrom_frames : int, optional
        The iterative path's subset size r (default: the most the budget allows).
    executor : aff_app.parallel.Executor, optional
        Independent parts of this one fit as tasks on a Dask executor (a serial one changes
        nothing): the initial γ grid of the search (:func:`aff_app.gp.hyper.search`), and on the
        dense path every PE set with a kernel side of at least ``TASK_SET_SIDE`` whose kernel
        fits a worker (``TASK_MEMORY_SHARE`` of its memory limit), once the λ check (on the
        small probe sets, here) has fixed λ. A task returns the set's α, σ̂², jitter and
        leave-one-frame-out terms, not its factor: the model then keeps no factors (as with
        ``keep_factors=False``; a ``predict`` with intervals rebuilds them), and
        ``model.record.solver`` names the scheduler and the sets that ran as tasks. The model
        is the serial fit's up to BLAS rounding (a worker runs BLAS on one thread; with the
        same threads here, the same numbers). A task that fails raises
        :class:`aff_app.parallel.TaskFailedError` (:class:`~aff_app.parallel.TaskUserError`
        for a FactorizationError) naming the set or γ candidate.
    progress : callable(fraction, message), optional
    record : FitRecord, optional
        The caller's part of the provenance (data, split, symmetry); the fit
        fills in the rest and keeps it as ``model.record``.

    Returns
    -------
    ForceModel
    """
    t0 = time.perf_counter()
    progress = progress or _noop
    if solver not in SOLVERS:
        raise ModelError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "iterative" and mode != "aff":
        raise ModelError(f"the iterative solver fits AFF models; {mode.upper()} needs solver='dense' or 'auto'")
    R, F, z, sets, kperms = _checked_inputs(R, F, z, mode, pe_sets, perms, gamma, lam, calibrate)
    m = R.shape[0]
    est = estimate_cost(m, [s.size for s in sets], n_perms=len(kperms), keep_factors=keep_factors,
                        solver=solver if mode == "aff" else "dense", budget_bytes=budget_bytes, n_atoms=z.size)
    check_budget(est, budget_bytes, what=f"{mode.upper()} fit")

    G = Geometry.from_positions(R)
    # the iterative path cannot use the smallest nuggets: γ is searched for those it can (method.md "Iterative path")
    from aff_app.gp.iterative import ITERATIVE_LAM_FLOOR

    gamma, lam, search_result, t_search = _search_hyperparameters(
        G, F, sets, kperms, gamma, lam, criterion=criterion, search_frames=search_frames,
        search_fraction=search_fraction, seed=seed, progress=progress, executor=executor,
        lam_min_rel=ITERATIVE_LAM_FLOOR if est.solver == "iterative" else 0.0)
    if est.solver == "iterative":
        reason = ("asked for (solver='iterative')" if solver == "iterative" else
                  f"the dense kernels need {est.dense_peak_bytes / 2**30:.3g} GB, over the memory budget")
        return _fit_iterative_model(R, F, z, mode, sets, kperms, gamma, lam, search_result, t_search, t0,
                                    train_idx=train_idx, calibrate=calibrate, budget_bytes=budget_bytes,
                                    cg_tol=cg_tol, nystrom_frames=nystrom_frames, reason=reason, est=est,
                                    record=record, seed=seed, progress=progress, G=G)

    progress(0.72, f"building and factorising {len(sets)} kernel matrices (largest {max(est.matrix_sides)}²)")
    sf = _SetFactoriser(G, F, sets, kperms, gamma, lam, est.matrix_sides, keep_factors=keep_factors,
                        want_loo=calibrate == "loo" and m >= 3, q_loo=min(m, max(LOO_FRAMES, m // 8)),
                        progress=progress, executor=executor)
    lam_refine = {"method": None}
    if refine_lam and search_result is not None and search_result.n_frames < m and m >= 3:
        lam_refine = _check_lam(sf, est, keep_factors, budget_bytes)
    sf.factor_remaining()
    sigma2, calibration = (sf.calibrated_sigma2() if sf.want_loo
                           else ([r[2] for r in sf.results], {"method": None, "scale": 1.0}))
    progress(1.0, "done")
    rec = dataclasses.replace(
        record or FitRecord(),
        version=__version__,
        mode=mode,
        n_train=m,
        criterion=criterion if search_result else "fixed",
        search=SearchRecord.from_dict(search_result.to_dict()) if search_result else SearchRecord(fixed=True),
        lam_check=LamCheck.from_dict(lam_refine),
        calibration=Calibration.from_dict(calibration),
        timings=dataclasses.replace(
            (record or FitRecord()).timings, search_s=t_search, build_s=sf.clock["build"],
            cholesky_s=sf.clock["factor"], force_s=time.perf_counter() - t0),
        cholesky_flops=est.cholesky_flops,
        solver=SolverRecord(method="dense", reason=("asked for (solver='dense')" if solver == "dense" else
                                                    "the dense kernels fit the memory budget"),
                            scheduler=None if sf.executor is None else sf.executor.choice.describe(),
                            task_sets=tuple(sf.on_tasks), tasks_s=sf.clock["tasks"] if sf.on_tasks else None),
    )
    return ForceModel(
        mode=mode, z=z, R_train=R, F_train=F,
        train_idx=np.arange(m) if train_idx is None else np.asarray(train_idx, np.int64),
        pe_sets=sets, perms=kperms, gamma=float(sf.gamma), lam=float(sf.lam), sigma2=np.array(sigma2),
        alpha=[r[1] for r in sf.results], jitter=[r[3] for r in sf.results], record=rec,
        # sets fitted as tasks sent no factor back: none kept, a predict with intervals rebuilds them all
        _chol=[r[0] for r in sf.results] if keep_factors and not sf.on_tasks else None, _geom=G,
    )


def _fit_iterative_model(R, F, z, mode, sets, kperms, gamma, lam, search_result, t_search, t0, *, train_idx,
                         calibrate, budget_bytes, cg_tol, nystrom_frames, reason, est, record, seed, progress, G):
    """The iterative path of :func:`fit_force_model` (method.md "Iterative path")."""
    from aff_app.gp.iterative import CG_TOL, fit_iterative

    m = R.shape[0]
    budget = default_budget_bytes() if budget_bytes is None else int(budget_bytes)
    progress(0.72, f"conjugate gradients on {len(sets)} matrix-free kernels (largest {max(est.matrix_sides)}²)")
    fit = fit_iterative(G, F, sets, kperms, gamma, lam, budget=budget, tol=CG_TOL if cg_tol is None else cg_tol,
                        calibrate=calibrate == "loo" and m >= 8, n_subset=nystrom_frames, seed=seed,
                        progress=lambda f, msg: progress(0.72 + 0.28 * f, msg))
    sigma2 = [s2 * fit.calibration["scale"] ** 2 for s2 in fit.sigma2]
    info = dict(fit.info)
    info["reason"] = reason
    rec = dataclasses.replace(
        record or FitRecord(),
        version=__version__,
        mode=mode,
        n_train=m,
        criterion=search_result.criterion if search_result else "fixed",
        search=SearchRecord.from_dict(search_result.to_dict()) if search_result else SearchRecord(fixed=True),
        lam_check=LamCheck(skipped="the iterative solver keeps no factor to compare two nuggets with"),
        calibration=Calibration.from_dict(fit.calibration),
        solver=SolverRecord.from_dict(info),
        timings=dataclasses.replace(
            (record or FitRecord()).timings, search_s=t_search, build_s=info["precondition_s"],
            cholesky_s=info["cg_s"], force_s=time.perf_counter() - t0),
        cholesky_flops=None,
    )
    progress(1.0, "done")
    return ForceModel(
        mode=mode, z=z, R_train=R, F_train=F,
        train_idx=np.arange(m) if train_idx is None else np.asarray(train_idx, np.int64),
        pe_sets=sets, perms=kperms, gamma=float(gamma), lam=float(fit.lam), sigma2=np.array(sigma2),
        alpha=fit.alpha, jitter=[0.0] * len(sets), record=rec, solver="iterative", subset_idx=fit.subset,
        _chol=fit.factors if fit.subset.size else None, _geom=G,
    )


def _checked_inputs(R, F, z, mode, pe_sets, perms, gamma, lam, calibrate):
    """The training arrays as float64/int64, the PE sets (sorted) and the kernel's permutations; refuses bad input."""
    if mode not in MODES:
        raise ModelError(f"mode must be one of {MODES}, got {mode!r}")
    if calibrate not in ("loo", None):
        raise ModelError(f"calibrate must be 'loo' or None, got {calibrate!r}")
    # fixed hyperparameters are checked before any search uses them (γ = 0 divides by zero in the kernel)
    if gamma is not None and not (np.isfinite(gamma) and gamma > 0):
        raise ModelError(f"γ must be a finite number > 0 (1/Å), got γ = {gamma}")
    if lam is not None and not (np.isfinite(lam) and lam >= 0):
        raise ModelError(f"λ must be a finite number >= 0, got λ = {lam}")
    R = np.asarray(R, dtype=np.float64)
    F = np.asarray(F, dtype=np.float64)
    z = np.asarray(z, dtype=np.int64)
    n = z.size
    if R.ndim != 3 or R.shape[1:] != (n, 3) or F.shape != R.shape:
        raise ModelError(f"R {R.shape} and F {F.shape} must both have shape (M, {n}, 3)")
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(F))):
        raise ModelError("training positions or forces contain NaN or infinite values")
    m = R.shape[0]
    if m < 2:
        raise ModelError(f"need at least 2 training frames, got {m}")
    identity = np.arange(n)[None]
    if mode == "aff":
        sets = [np.arange(n)[i : i + 1] for i in range(n)] if pe_sets is None else [np.sort(np.asarray(s, np.int64)) for s in pe_sets]
        allatoms = np.sort(np.concatenate(sets)) if sets else np.array([])
        if allatoms.tolist() != list(range(n)):
            raise ModelError(f"PE sets must partition the {n} atoms exactly once each")
        kperms = identity if perms is None else np.asarray(perms, np.int64)
    else:
        sets = [np.arange(n)]
        kperms = identity if (mode == "gdml" or perms is None) else np.asarray(perms, np.int64)
    for p in kperms:
        if sorted(p.tolist()) != list(range(n)) or np.any(z[p] != z):
            raise ModelError("every permutation must map atoms onto atoms of the same element")
    for s in sets:
        for p in kperms:
            if not np.array_equal(np.sort(p[s]), s):
                raise ModelError(f"permutation {p.tolist()} does not map PE set {s.tolist()} onto itself")
    sets.sort(key=lambda s: int(s[0]))
    return R, F, z, sets, kperms


def _search_hyperparameters(G, F, sets, kperms, gamma, lam, *, criterion, search_frames, search_fraction, seed,
                            progress, executor=None, lam_min_rel=0.0):
    """γ and λ (those not given) by ``criterion`` on a seeded subset of the frames: (γ, λ, SearchResult|None, s).

    ``executor``: the γ grid's candidates run as its tasks (:func:`aff_app.gp.hyper.search`).
    ``lam_min_rel``: λ searched from this many kernel variances up (the iterative path's floor).
    """
    from aff_app.gp.hyper import SearchKernels

    if gamma is not None and lam is not None:
        return gamma, lam, None, 0.0
    ts = time.perf_counter()
    m = F.shape[0]
    # the search eigendecomposes each kernel (≈ 10 n³ flops): keep sides ≤ MAX_SEARCH_SIDE
    lmax = max(s.size for s in sets)
    # and the PS kernel costs S plain kernels per evaluation: fewer frames for large groups
    target = max(int(search_frames), int(np.ceil(search_fraction * m)))
    per_perm = max(MIN_SEARCH_FRAMES, int(target / np.sqrt(len(kperms))))
    ms = max(2, min(m, target, per_perm, MAX_SEARCH_SIDE // (3 * lmax)))
    sub = np.sort(np.random.default_rng(seed).choice(m, size=ms, replace=False)) if ms < m else np.arange(m)
    Gs = G.take(sub)
    ys = [F[sub][:, s, :].reshape(-1) for s in sets]
    d = Gs.D
    rho = np.sqrt(np.maximum(np.sum(d**2, 1)[:, None] + np.sum(d**2, 1)[None] - 2 * d @ d.T, 0))
    rho_scale = float(np.median(rho[np.triu_indices(ms, 1)])) if ms > 1 else 1.0
    result = search(
        SearchKernels(Gs, tuple(sets), kperms),  # picklable: a γ candidate may run on another process
        ys,
        rho_scale=rho_scale,
        criterion=criterion,
        gamma=gamma,
        block=[3 * s.size for s in sets],
        progress=lambda f, msg: progress(0.7 * f, "hyperparameter search: " + msg),
        n_frames=ms,
        executor=executor,
        lam_min_rel=lam_min_rel,
    )
    gamma = result.gamma if gamma is None else gamma
    if lam is None:
        lam = result.lam
    if not (gamma > 0 and lam >= 0):
        raise ModelError(f"γ must be > 0 and λ >= 0, got γ = {gamma}, λ = {lam}")
    return gamma, lam, result, time.perf_counter() - ts


#: Smallest kernel side 3·M·l_i of a PE set that ``fit_force_model(executor=...)`` factors as a task on the
#: executor's workers; smaller sets are factored here. Measured on the 2-core machine (uracil, one thread):
#: a task's round trip is ≈ 5–10 ms (twelve tasks of side 120 took 75 ms on two workers, 18 ms here), the
#: training geometry is scattered once per fit (0.5 MB per 100 frames, 15 ms for 400 frames), while a set's
#: build + Cholesky + leave-one-out terms take 36 ms at side 1200 and 165 ms at 2400. From 2400 up the
#: round trip is a few per cent of the work a task moves; below it the overhead is 15–30% or more, and a
#: set factored here also shares the coefficient cache and all BLAS threads.
TASK_SET_SIDE = 2400
#: Share of a worker's memory limit one task's kernel may take (its nanny pauses the worker at 80% and
#: kills it at 95%; the rest is the worker's own ≈ 0.2 GB, the geometry and the factor's leave-one-out
#: copies). A larger set is factored here, within the fit's own budget.
TASK_MEMORY_SHARE = 0.6


class _SetFactoriser:
    """Builds, factors and solves the PE sets' kernels one set at a time, and keeps what each set yields.

    One PE set at a time: build its kernel's lower triangle, factor it in place, solve. The
    pair coefficients (c1, c2) are shared by the sets (CoefficientCache). Without keep_factors
    one buffer the size of the largest kernel serves every set: its pages are faulted in once
    and the peak memory is one kernel, not their sum (uracil, M = 1000, 2-core VM: building
    twelve fresh 72 MB kernels took 0.9 s, into one reused buffer 0.4 s).

    ``results[k]`` is set k's (L or None, α, σ̂², jitter); ``loo[k]`` its leave-one-frame-out
    (residuals, variances) at the final λ; ``clock`` the build and factor seconds.

    With a remote ``executor`` (Dask), the sets with a kernel side of at least TASK_SET_SIDE that
    fit a worker's memory (``eligible``) and are left after the λ check are fitted as tasks
    (:meth:`solve_task`): only α, σ̂², the jitter and the leave-one-out terms come back, never
    the factor (``results[k][0]`` None; ``on_tasks`` lists them).
    """

    def __init__(self, G, F, sets, kperms, gamma, lam, sides, *, keep_factors, want_loo, q_loo, progress,
                 executor=None):
        self.G, self.sets, self.kperms, self.gamma, self.lam = G, sets, kperms, gamma, lam
        self.sides, self.keep_factors, self.want_loo, self.q_loo = sides, keep_factors, want_loo, q_loo
        self.progress = progress
        self.ys = [F[:, s, :].reshape(-1) for s in sets]
        self.cache = CoefficientCache(max(s.size for s in sets)) if len(sets) > 1 else None
        self.executor = executor if executor is not None and executor.remote else None
        self.eligible = self._task_sets()
        # the buffer serves the sets built here (sized up in build() should a larger one come here)
        here = [n for k, n in enumerate(sides) if k not in self.eligible] or [min(sides)]
        self.buffer = None if keep_factors else np.empty(max(here) ** 2)
        self.clock = {"build": 0.0, "factor": 0.0, "loo": 0.0, "tasks": 0.0}
        self.done = 0
        self.results: list = [None] * len(sets)
        self.loo: dict[int, tuple] = {}
        self.on_tasks: list[int] = []

    def _task_sets(self) -> set[int]:
        """The sets worth a task (side ≥ TASK_SET_SIDE) whose kernel fits a worker (TASK_MEMORY_SHARE)."""
        if self.executor is None:
            return set()
        limit = self.executor.worker_memory_bytes()
        return {k for k, n in enumerate(self.sides)
                if n >= TASK_SET_SIDE and (limit is None or 8.0 * n * n <= TASK_MEMORY_SHARE * limit)}

    def build(self, k: int) -> np.ndarray:
        tb = time.perf_counter()
        side = self.sides[k]
        if self.buffer is not None and self.buffer.size < side * side:
            self.buffer = np.empty(side * side)  # a set meant for a task, factored here (a λ-check probe)
        out = None if self.buffer is None else [self.buffer[: side * side]]
        K = force_covariance_sets(self.G, self.G, self.gamma, [self.sets[k]], perms=self.kperms, mirror=False,
                                  out=out, coef_cache=self.cache)[0]
        self.clock["build"] += time.perf_counter() - tb
        return K

    def factor(self, k: int, K: np.ndarray):
        tc, built = time.perf_counter(), self.clock["build"]
        res = self.solve(K, self.ys[k], self.lam, k, self.sets[k], rebuild=lambda: self.build(k))
        self.clock["factor"] += time.perf_counter() - tc - (self.clock["build"] - built)  # a rebuild counts as build
        self.done += 1
        self.progress(0.75 + 0.25 * self.done / len(self.sets), f"factorised PE set {self.done}/{len(self.sets)}")
        return res

    @staticmethod
    def solve(K: np.ndarray, y: np.ndarray, lam: float, k: int, atoms, rebuild) -> tuple:
        """(L, α, σ̂², jitter) of one set from its kernel's lower triangle K (overwritten by L)."""
        L, jit = _cholesky_with_jitter(K, lam, k, atoms, rebuild=rebuild)
        # L is C-ordered with the factor in its lower triangle; cho_solve would copy it to
        # Fortran order first (70 ms at side 3000), solve_triangular reads it in place
        a = scipy.linalg.solve_triangular(L, y, lower=True, check_finite=False)
        a = scipy.linalg.solve_triangular(L, a, lower=True, trans="T", check_finite=False)
        # σ̂_i² = F_iᵀ(R_i+λI)⁻¹F_i / (3 M l_i)   (method.md (9))
        return L, a, float(y @ a) / y.size, jit

    @staticmethod
    def solve_task(G: Geometry, y: np.ndarray, atoms: np.ndarray, k: int, kperms: np.ndarray, gamma: float,
                   lam: float, lmax: int, q_loo: int | None) -> tuple:
        """One PE set's fit where a task runs it: build R_k, factor R_k + λI, solve (method.md (8)-(9)).

        A module-level name with plain inputs (the training frames' ``G``, scattered once; F_k as
        ``y``, shape (3·M·l_k,)), so it pickles by reference. ``lmax`` sets the kernel's row chunks
        as the builds here set them (the coefficient cache of the fit's largest set), so the kernel
        is the one this process would build. Returns (α, σ̂², jitter, (r, var) or None, seconds):
        the leave-one-frame-out residuals and variances of the last ``q_loo`` frames
        (:func:`loo_frame_residuals`) for the calibration, never the factor (side² numbers).
        """
        from aff_app.parallel import aligned

        t0 = time.perf_counter()
        # arrays as Dask delivered them may be unaligned, which numpy's matmul sums without BLAS (see aligned)
        G, y, atoms, kperms = aligned((G, y, atoms, kperms))
        cache = CoefficientCache(lmax)

        def build() -> np.ndarray:
            return force_covariance_sets(G, G, gamma, [atoms], perms=kperms, mirror=False, coef_cache=cache)[0]

        L, a, sigma2, jit = _SetFactoriser.solve(build(), y, lam, k, atoms, rebuild=build)
        loo = None if q_loo is None else loo_frame_residuals(L, a, 3 * atoms.size, q_loo)
        return a, sigma2, jit, loo, time.perf_counter() - t0

    def factor_as_tasks(self, ks: list[int]) -> None:
        """Sets ``ks`` fitted by :meth:`solve_task` on the executor; their results and leave-one-out terms kept."""
        from aff_app.parallel import Task

        tt = time.perf_counter()
        geometry = self.executor.scatter(self.G)  # the training frames, sent once for all the sets
        lmax = self.cache.lmax if self.cache is not None else max(s.size for s in self.sets)
        q = self.q_loo if self.want_loo else None

        def name(k: int) -> str:
            atoms = self.sets[k].tolist()
            shown = ",".join(map(str, atoms[:8])) + (",…" if len(atoms) > 8 else "")
            return f"PE set {k} (atoms {shown}; kernel side {self.sides[k]})"

        tasks = [Task(name=name(k), fn=_SetFactoriser.solve_task,
                      args=(geometry, self.ys[k], self.sets[k], k, self.kperms, self.gamma, self.lam, lmax, q),
                      weight=float(self.sides[k]) ** 3) for k in ks]
        base, n = self.done, len(self.sets)

        def progress(f: float, msg: str) -> None:
            self.progress(0.75 + 0.25 * (base + f * len(ks)) / n, f"factorised on the workers: {msg}")

        for k, (a, sigma2, jit, loo, _) in zip(ks, self.executor.run(tasks, progress=progress)):
            self.results[k] = (None, a, sigma2, jit)
            if loo is not None:
                self.loo[k] = loo
        self.done += len(ks)
        self.on_tasks = sorted(self.on_tasks + list(ks))
        # the wait counts as factorisation (build_s + cholesky_s stay parts of the fit's wall time)
        self.clock["tasks"] += time.perf_counter() - tt
        self.clock["factor"] += time.perf_counter() - tt

    def loo_of(self, res, k: int) -> tuple:
        return loo_frame_residuals(res[0], res[1], 3 * self.sets[k].size, self.q_loo)

    def lean(self, res) -> tuple:
        """The set's result without its factor unless factors are kept (the buffer is reused)."""
        return res if self.keep_factors else (None,) + tuple(res[1:])

    def finish(self, k: int, res) -> tuple:
        """Keep the set's result; without keep_factors take what needs L now."""
        if not self.keep_factors and self.want_loo and k not in self.loo:
            tl = time.perf_counter()
            self.loo[k] = self.loo_of(res, k)
            self.clock["loo"] += time.perf_counter() - tl  # counted with the calibration
        return self.lean(res)

    def factor_remaining(self) -> None:
        """Every set the λ check did not settle: the ``eligible`` ones as tasks, first, then the
        others here, one after another on all BLAS threads.

        Here, one set after another is faster than one set per core with one thread each at every
        side measured on the 2-core machine (300: 6 vs 10 ms; 1200: 0.12 vs 0.16 s; 3000: 1.1 vs
        2.3 s for twelve sets): tasks pay off on workers of other machines, or to keep the large
        kernels out of this process's memory.
        """
        remaining = [k for k in range(len(self.sets)) if self.results[k] is None]
        tasks = [k for k in remaining if k in self.eligible]
        if tasks:
            self.factor_as_tasks(tasks)
            remaining = [k for k in remaining if k not in self.eligible]
        if self.keep_factors and len(remaining) > 1:
            # every kernel is kept anyway: build them in one pass, then factor them, so the
            # switch from our assembly threads to BLAS's (whose idle workers spin-wait for a
            # while after each factorisation, taking a core from the assembly) happens once
            tb = time.perf_counter()
            Ks = force_covariance_sets(self.G, self.G, self.gamma, [self.sets[k] for k in remaining],
                                       perms=self.kperms, mirror=False, coef_cache=self.cache)
            self.clock["build"] += time.perf_counter() - tb
            for k in remaining:
                self.results[k] = self.finish(k, self.factor(k, Ks.pop(0)))
        else:
            for k in remaining:
                self.results[k] = self.finish(k, self.factor(k, self.build(k)))
        self.buffer = None

    def calibrated_sigma2(self) -> tuple[list, dict]:
        """σ̂_i² scaled so the leave-one-frame-out latent 95% intervals hold 95% (calibrate='loo')."""
        sigma2 = [r[2] for r in self.results]
        jitter = [r[3] for r in self.results]
        calibration = {"method": None, "scale": 1.0}
        tl = time.perf_counter() - self.clock["loo"]  # leave-one-out terms already taken count here
        # the latent interval (the one PCI scores) against the reference forces: latent
        # variance = observation variance − nugget (λ + jitter_i), times σ̂_i² (the probe
        # sets' leave-one-out terms are reused from the λ check)
        z_loo = np.concatenate([
            np.abs(r) / np.sqrt(np.maximum(v - (self.lam + jitter[k]), 0.0) * sigma2[k])
            for k, (r, v) in ((k, self.loo[k] if k in self.loo else self.loo_of(self.results[k], k))
                              for k in range(len(self.sets)))])
        z_loo = z_loo[np.isfinite(z_loo)]
        z95 = float(scipy.special.ndtri(0.975))
        if z_loo.size:
            scale = float(np.quantile(z_loo, 0.95) / z95)
            if np.isfinite(scale) and scale > 0:
                sigma2 = [s2 * scale**2 for s2 in sigma2]
                calibration = {"method": "loo", "scale": scale, "frames": int(self.q_loo),
                               "loo_coverage_before": float(np.mean(z_loo <= z95)),
                               "seconds": time.perf_counter() - tl}
        return sigma2, calibration


def _check_lam(sf: _SetFactoriser, est, keep_factors: bool, budget_bytes) -> dict:
    """The search's λ against λ·LAM_REFINE_FACTOR on all M frames, judged on the probe sets.

    One extra Cholesky per probe set (and a copy of its kernel while it runs); sets
    ``sf.lam`` to the chosen nugget and keeps the probe sets' results. Returns the λ
    check's record (``method`` None, with ``skipped``, when no probe set fits the budget).
    """
    budget = default_budget_bytes() if budget_bytes is None else int(budget_bytes)
    probes = _probe_sets(est.matrix_sides, keep_factors, est.peak_bytes, budget)
    if not probes:
        p = int(np.argmin(est.matrix_sides))
        return {"method": None,
                "skipped": (f"a copy of PE set {p}'s kernel ({8 * est.matrix_sides[p] ** 2 / 2**30:.2f} GB) "
                            f"would exceed the memory budget ({budget / 2**30:.2f} GB)")}
    # the subset's λ against λ/16 on all M frames, judged on the probe sets (one extra Cholesky each)
    tr = time.perf_counter()
    lam_search = sf.lam
    lam_alt = lam_search * LAM_REFINE_FACTOR
    pair = {}  # probe set -> ((result, loo) at λ, (result, loo) at λ/16)
    for p in probes:
        K = sf.build(p)
        K_copy = np.array(K)
        sf.lam = lam_search
        first = sf.factor(p, K)
        one = (first, sf.loo_of(first, p))
        sf.done -= 1  # the second factorisation of the same set is not a further set in the progress
        sf.lam = lam_alt
        alt = sf.factor(p, K_copy)
        two = (alt, sf.loo_of(alt, p))
        pair[p] = ((sf.lean(one[0]), one[1]), (sf.lean(two[0]), two[1]))
        del K, K_copy, first, alt
    errs = [float(np.mean(np.abs(np.concatenate([pair[p][c][1][0] for p in probes])))) for c in (0, 1)]
    pick = 1 if errs[1] < (1.0 - LAM_REFINE_MIN_GAIN) * errs[0] else 0
    sf.lam = (lam_search, lam_alt)[pick]
    for p in probes:
        sf.results[p], sf.loo[p] = pair[p][pick]
    return {"method": "loo", "probe_sets": [int(p) for p in probes], "candidates": [lam_search, lam_alt],
            "loo_mae": errs, "frames": int(sf.q_loo), "chosen": sf.lam, "seconds": time.perf_counter() - tr}

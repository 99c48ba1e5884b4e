"""The DCF-style direct covariant force model: fit, predict, save and load.

After Mailoa et al., Nat. Mach. Intell. 1, 471 (2019) ("direct covariant
forces"), in plain numpy: for each atom, rotation-invariant features of its
neighbourhood (:mod:`aff_app.dcf.features`) feed a small network of its
element (:mod:`aff_app.dcf.network`) that predicts the projections
p_k = v_k · F of the atom's force on K rotation-covariant vectors v_k of the
same neighbourhood. The force is recovered by ridge least squares,

    F̂ = (VᵀV + εI)⁻¹ Vᵀ p̂,   V the atom's K×3 matrix of vectors, ε relative,

so it rotates with the molecule by construction and no energy derivative is
taken (the forces are not conservative). The networks train on the error of
the recovered force, with Adam on mini-batches of atoms, early stopping on a
validation share of the training frames and a wall-time limit.

Each element's network sees only its own atoms and the loss is a sum over
atoms, so the elements' networks train independently: each keeps its own best
epoch, learning-rate schedule and stopping point within a shared epoch loop.

Units: positions Å, forces kcal/mol/Å, times s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from aff_app import __version__
from aff_app.cancel import Cancelled
from aff_app.errors import AFFError
from aff_app.gp.force import ForcePrediction, ModelError, TrainedForces, _json_default, check_model_format, check_positions
from aff_app.gp.record import FitRecord, Timings
from aff_app.dcf.features import FeatureSpec, atom_features, n_features, n_vectors
from aff_app.dcf.network import MLP, Adam, force_loss, recover, recovery_matrix

__all__ = ["DCF_FORMAT", "DCFError", "DCFSettings", "DCFHistory", "DCFModel", "fit_dcf"]

#: Format string written into every DCF model's arrays.
DCF_FORMAT = "aff_app.DCFModel/1"
#: Fewest training frames accepted by :func:`fit_dcf`.
MIN_FRAMES = 10
#: Smallest standard deviation a feature is divided by (a constant feature stays 0 after scaling).
_STD_FLOOR = 1e-8

Progress = Callable[[float, str], None]


class DCFError(AFFError, ValueError):
    """Invalid input to :func:`fit_dcf` (shapes, non-finite values, too few frames, bad settings)."""


@dataclass(frozen=True)
class DCFSettings:
    """Hyperparameters of the DCF-style model (defaults tuned on rMD17 ethanol, uracil, aspirin at M = 1000).

    Attributes
    ----------
    cutoff : float
        Cutoff radius of the radial features and of the vectors, Å (8 Å covers
        the small MD17 molecules almost entirely).
    n_radial : int
        Radial Gaussians per neighbour element, centres evenly from ``radial_min`` to ``cutoff``.
    radial_min : float
        First radial centre, Å.
    radial_width : float
        Standard deviation of the radial Gaussians, Å.
    angular_cutoff : float
        Cutoff radius of the angular features, Å.
    n_angles : int
        Angle centres θs per element pair, evenly in [0, π).
    zeta : float
        Sharpness ζ of the angular terms.
    n_angular_radial : int
        Mean-distance centres Rs per element pair, evenly from ``angular_min`` to ``angular_max``.
    angular_min, angular_max : float
        First and last Rs, Å.
    angular_width : float
        Standard deviation of the mean-distance Gaussians, Å.
    n_vector_radial : int
        Covariant vectors per neighbour element (K = elements × this), radial weight
        centres evenly from ``vector_min`` to ``vector_max``.
    vector_min, vector_max : float
        First and last vector centre, Å.
    vector_width : float
        Standard deviation of the vectors' radial weights, Å.
    gram_features : bool
        Append the Gram matrix v_k · v_l of the covariant vectors to the invariant features
        (angular functions whose radial parts are the vectors' weights: the projections are
        nearly linear in them when the force is a sum of pair terms along the bonds).
    ridge : float
        Relative ridge ε / (tr(VᵀV)/3) of the least-squares recovery.
    linear_ridge : float
        Penalty per sample of the ridge regression of the standardised projections on the
        standardised features that starts each network's linear skip path.
    hidden : tuple of int
        Hidden layer sizes of each element's network.
    learning_rate : float
        Adam's initial step size.
    lr_decay : float
        Factor applied to an element's step size after ``lr_patience`` epochs without a validation gain.
    lr_patience : int
        Epochs without gain before the step size decays.
    min_learning_rate : float
        An element stops when its step size would fall below this.
    batch_size : int
        Atoms per Adam step.
    grad_clip : float
        Largest global norm of one step's gradient (loss in units of the element's force variance).
    max_epochs : int
        Passes over the training atoms at most.
    valid_fraction : float
        Share of the training frames held out for early stopping (0: none; then the
        training loss decides).
    patience : int
        An element stops after this many epochs without a validation gain.
    time_limit_s : float
        Wall-time limit of the training loop, s (the best weights so far are kept).
    seed : int
        Seeds the validation split, the initial weights and the batch order.
    """

    cutoff: float = 8.0
    n_radial: int = 24
    radial_min: float = 0.8
    radial_width: float = 0.3
    angular_cutoff: float = 5.0
    n_angles: int = 8
    zeta: float = 8.0
    n_angular_radial: int = 4
    angular_min: float = 1.0
    angular_max: float = 3.5
    angular_width: float = 0.4
    n_vector_radial: int = 12
    vector_min: float = 0.9
    vector_max: float = 3.0
    vector_width: float = 0.15
    gram_features: bool = True
    ridge: float = 1e-3
    linear_ridge: float = 1e-3
    hidden: tuple[int, ...] = (64, 64)
    learning_rate: float = 5e-4
    lr_decay: float = 0.5
    lr_patience: int = 10
    min_learning_rate: float = 1e-5
    batch_size: int = 64
    grad_clip: float = 1.0
    max_epochs: int = 400
    valid_fraction: float = 0.1
    patience: int = 30
    time_limit_s: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        problems = []
        for name in ("cutoff", "radial_width", "angular_cutoff", "zeta", "angular_width", "vector_width",
                     "learning_rate", "time_limit_s", "min_learning_rate", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                problems.append(f"{name} must be a positive number, got {v!r}")
        for name in ("n_radial", "n_angles", "n_angular_radial", "n_vector_radial", "batch_size", "max_epochs",
                     "patience", "lr_patience"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.seed, (int, np.integer)) and not isinstance(self.seed, bool) and self.seed >= 0):
            problems.append(f"seed must be a non-negative integer, got {self.seed!r}")
        if not (0.0 <= self.valid_fraction < 0.5):
            problems.append(f"valid_fraction must lie in [0, 0.5), got {self.valid_fraction!r}")
        if not (0.0 < self.lr_decay <= 1.0):
            problems.append(f"lr_decay must lie in (0, 1], got {self.lr_decay!r}")
        if not (0.0 <= self.ridge < 1.0):
            problems.append(f"ridge must lie in [0, 1), got {self.ridge!r}")
        if not (isinstance(self.linear_ridge, (int, float)) and math.isfinite(self.linear_ridge)
                and self.linear_ridge >= 0):
            problems.append(f"linear_ridge must be a non-negative number, got {self.linear_ridge!r}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            problems.append(f"hidden must be one or more positive layer sizes, got {self.hidden!r}")
        for name in ("radial_min", "angular_min", "angular_max", "vector_min", "vector_max"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                problems.append(f"{name} must be a non-negative number, got {v!r}")
        if problems:
            raise DCFError("invalid DCF settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """JSON-ready (``hidden`` as a list)."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DCFSettings":
        """Inverse of :meth:`to_dict`; unknown keys or bad values raise :class:`DCFError`."""
        if not isinstance(d, dict):
            raise DCFError(f"DCF settings must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DCFError(f"unknown DCF settings {unknown}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise DCFError(f"invalid DCF settings: {exc}") from None

    def feature_spec(self, z: np.ndarray) -> FeatureSpec:
        """The feature layout for a molecule with atomic numbers ``z`` (N,)."""
        return FeatureSpec(
            elements=tuple(int(e) for e in np.unique(np.asarray(z))),
            cutoff=float(self.cutoff),
            radial_centres=tuple(np.linspace(self.radial_min, self.cutoff, self.n_radial).tolist()),
            radial_width=float(self.radial_width),
            angular_cutoff=float(self.angular_cutoff),
            angle_centres=tuple((np.arange(self.n_angles) * np.pi / self.n_angles).tolist()),
            zeta=float(self.zeta),
            angular_centres=tuple(np.linspace(self.angular_min, self.angular_max, self.n_angular_radial).tolist()),
            angular_width=float(self.angular_width),
            vector_centres=tuple(np.linspace(self.vector_min, self.vector_max, self.n_vector_radial).tolist()),
            vector_width=float(self.vector_width),
            gram=bool(self.gram_features),
        )


@dataclass
class DCFHistory:
    """How the training went.

    Attributes
    ----------
    train_loss : ndarray, shape (epochs,)
        Training force MAE per component during each epoch, kcal/mol/Å, atom-weighted over
        the elements (a stopped element contributes its last epoch's value). The networks
        minimise the squared error; the MAE is what early stopping judges.
    valid_loss : ndarray, shape (epochs,)
        The same on the validation frames after each epoch (NaN without validation frames).
    epochs : int
        Epochs run.
    stop_reason : str
        Why training ended ('early stopping', 'learning rate floor', 'max_epochs', 'time limit').
    best_epochs : ndarray, shape (E,)
        Epoch (1-based) whose weights each element's network kept.
    seconds : float
        Wall time of the whole fit (features, scaling, training), s.
    """

    train_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    valid_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    epochs: int = 0
    stop_reason: str = ""
    best_epochs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seconds: float = 0.0


def _json_str(obj) -> np.ndarray:
    return np.array(json.dumps(obj, default=_json_default))


@dataclass
class DCFModel(TrainedForces):
    """A fitted DCF-style force network (see the module docstring).

    Attributes
    ----------
    z : ndarray, shape (N,)
        Atomic numbers.
    R_train : ndarray, shape (M, N, 3)
        Training positions, Å.
    F_train : ndarray, shape (M, N, 3)
        Training forces, kcal/mol/Å.
    train_idx : ndarray, shape (M,)
        Frame indices of the training frames in the source trajectory.
    settings : DCFSettings
    elements : ndarray, shape (E,)
        Sorted distinct atomic numbers; network e serves atoms with ``z == elements[e]``.
    x_mean, x_std : ndarray, shape (E, D)
        Feature standardisation per element.
    p_mean, p_std : ndarray, shape (E, K)
        Output scaling per element: p̂ = p_mean + p_std · network output (kcal/mol/Å).
    networks : list of MLP
        One per element, D → hidden → K.
    history : DCFHistory
    record : FitRecord
    """

    mode = "dcf"
    gamma = float("nan")
    lam = float("nan")
    has_interval = False

    z: np.ndarray
    R_train: np.ndarray
    F_train: np.ndarray
    train_idx: np.ndarray
    settings: DCFSettings
    elements: np.ndarray
    x_mean: np.ndarray
    x_std: np.ndarray
    p_mean: np.ndarray
    p_std: np.ndarray
    networks: list
    history: DCFHistory = field(default_factory=DCFHistory)
    record: FitRecord = field(default_factory=FitRecord)
    _spec: FeatureSpec | None = field(default=None, repr=False)

    @property
    def spec(self) -> FeatureSpec:
        """The feature layout (from the settings and z)."""
        if self._spec is None:
            self._spec = self.settings.feature_spec(self.z)
        return self._spec

    # -- prediction ---------------------------------------------------------------
    def _forces(self, X: np.ndarray, V: np.ndarray) -> np.ndarray:
        """Forces (B, N, 3) from features (B, N, D) and vectors (B, N, K, 3)."""
        B, N = X.shape[:2]
        out = np.empty((B, N, 3))
        for e, el in enumerate(self.elements):
            atoms = np.flatnonzero(self.z == el)
            x = (X[:, atoms].reshape(-1, X.shape[2]) - self.x_mean[e]) / self.x_std[e]
            p = self.p_mean[e] + self.p_std[e] * self.networks[e].forward(x)
            A = recovery_matrix(V[:, atoms].reshape(-1, *V.shape[2:]), self.settings.ridge)
            out[:, atoms] = recover(A, p).reshape(B, atoms.size, 3)
        return out

    def predict(self, R, *, return_std: bool = True, batch_size: int = 256,
                progress: Progress | None = None) -> ForcePrediction:
        """Predicted forces of frames.

        Parameters
        ----------
        R : array_like, shape (N, 3) or (B, N, 3)
            Positions, Å.
        return_std : bool
            Accepted for the force models' interface; this model has no interval, ``std`` is always None.
        batch_size : int
            Frames per feature batch (bounds memory).
        progress : callable(fraction, message), optional

        Returns
        -------
        ForcePrediction
            ``mean`` (B, N, 3) in kcal/mol/Å; ``std`` and ``noise_var`` None.

        Raises
        ------
        ModelError
            R of the wrong shape or with non-finite values.
        """
        R = check_positions(R, self.n_atoms)
        batch_size = max(1, int(batch_size))
        B = R.shape[0]
        mean = np.empty((B, self.n_atoms, 3))
        for s in range(0, B, batch_size):
            X, V = atom_features(R[s:s + batch_size], self.z, self.spec)
            mean[s:s + batch_size] = self._forces(X, V)
            if progress is not None:
                done = min(B, s + batch_size)
                progress(done / B, f"predicted {done}/{B} frames")
        return ForcePrediction(mean=mean, std=None, noise_var=None)

    # -- persistence --------------------------------------------------------------
    def to_arrays(self, prefix: str = "") -> dict:
        """The model as plain arrays (no object arrays), each key prefixed with ``prefix``."""
        d = {
            "format": np.array(DCF_FORMAT),
            "version": np.array(__version__),
            "mode": np.array(self.mode),
            "z": np.asarray(self.z, dtype=np.int64),
            "R_train": np.asarray(self.R_train, dtype=np.float64),
            "F_train": np.asarray(self.F_train, dtype=np.float64),
            "train_idx": np.asarray(self.train_idx, dtype=np.int64),
            "settings": _json_str(self.settings.to_dict()),
            "info": _json_str(self.record.to_dict()),
            "history": _json_str({"epochs": self.history.epochs, "stop_reason": self.history.stop_reason,
                                  "best_epochs": self.history.best_epochs, "seconds": self.history.seconds}),
            "train_loss": np.asarray(self.history.train_loss, dtype=np.float64),
            "valid_loss": np.asarray(self.history.valid_loss, dtype=np.float64),
            "elements": np.asarray(self.elements, dtype=np.int64),
            "x_mean": self.x_mean, "x_std": self.x_std, "p_mean": self.p_mean, "p_std": self.p_std,
        }
        # one stacked array per layer: every element's network has the same shape
        for l in range(len(self.networks[0].weights)):
            d[f"W{l}"] = np.stack([net.weights[l] for net in self.networks])
            d[f"b{l}"] = np.stack([net.biases[l] for net in self.networks])
        d["S"] = np.stack([net.skip for net in self.networks])
        return {prefix + k: v for k, v in d.items()}

    @classmethod
    def from_arrays(cls, d: dict, *, where: str = "model", prefix: str = "") -> "DCFModel":
        """Validate arrays written by :meth:`to_arrays`; any malformed content raises :class:`ModelError`."""
        return cls._read_prefixed(d, where, prefix, "DCF model data")

    @classmethod
    def _from_arrays(cls, d: dict, where: str) -> "DCFModel":
        need = ["format", "mode", "z", "R_train", "F_train", "train_idx", "settings", "info", "history",
                "train_loss", "valid_loss", "elements", "x_mean", "x_std", "p_mean", "p_std", "S"]
        missing = [k for k in need if k not in d]
        if missing:
            raise ModelError(f"{where}: missing keys {missing}: not an aff_app DCF model")
        for k, v in d.items():
            if np.asarray(v).dtype == object:
                raise ModelError(f"{where}: array {k!r} holds objects; a model holds plain arrays only")
        check_model_format(d, DCF_FORMAT, where)
        if str(d["mode"]) != cls.mode:
            raise ModelError(f"{where}: mode {str(d['mode'])!r} is not {cls.mode!r}")
        z = np.asarray(d["z"])
        if z.ndim != 1 or z.size < 1 or not np.issubdtype(z.dtype, np.integer) or np.any(z < 1):
            raise ModelError(f"{where}: z must be a 1-D array of positive atomic numbers, got {z.dtype} {z.shape}")
        z = z.astype(np.int64)
        n = z.size
        R, F = np.asarray(d["R_train"], float), np.asarray(d["F_train"], float)
        m = R.shape[0] if R.ndim == 3 else -1
        if R.shape != (m, n, 3) or F.shape != R.shape:
            raise ModelError(f"{where}: R_train {R.shape} / F_train {F.shape} do not match {n} atoms")
        train_idx = np.asarray(d["train_idx"])
        if train_idx.shape != (m,) or not np.issubdtype(train_idx.dtype, np.integer):
            raise ModelError(f"{where}: train_idx must hold {m} integer frame indices, got {train_idx.shape}")
        settings_d = _json_load(d["settings"], where, "settings")
        try:
            settings = DCFSettings.from_dict(settings_d)
        except DCFError as exc:
            raise ModelError(f"{where}: {exc}") from None
        spec = settings.feature_spec(z)
        elements = np.asarray(d["elements"])
        if elements.tolist() != list(spec.elements):
            raise ModelError(f"{where}: elements {elements.tolist()} do not match z's {list(spec.elements)}")
        E, D, K = len(spec.elements), n_features(spec), n_vectors(spec)
        arrays = {}
        for k, shape in (("x_mean", (E, D)), ("x_std", (E, D)), ("p_mean", (E, K)), ("p_std", (E, K))):
            a = np.asarray(d[k], dtype=np.float64)
            if a.shape != shape or not np.all(np.isfinite(a)):
                raise ModelError(f"{where}: {k} must be finite with shape {shape}, got {a.shape}")
            arrays[k] = a
        if np.any(arrays["x_std"] <= 0) or np.any(arrays["p_std"] <= 0):
            raise ModelError(f"{where}: x_std and p_std must be positive")
        sizes = (D, *settings.hidden, K)
        skip = np.asarray(d["S"], dtype=np.float64)
        if skip.shape != (E, D, K) or not np.all(np.isfinite(skip)):
            raise ModelError(f"{where}: the skip weights S must be finite with shape {(E, D, K)}, got {skip.shape}")
        nets = [MLP([], [], skip[e].copy()) for e in range(E)]
        for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            if f"W{l}" not in d or f"b{l}" not in d:
                raise ModelError(f"{where}: missing weights of layer {l}")
            W, bias = np.asarray(d[f"W{l}"], dtype=np.float64), np.asarray(d[f"b{l}"], dtype=np.float64)
            if W.shape != (E, a, b) or bias.shape != (E, b):
                raise ModelError(f"{where}: layer {l} must have weights {(E, a, b)} and biases {(E, b)}, "
                                 f"got {W.shape} and {bias.shape}")
            if not (np.all(np.isfinite(W)) and np.all(np.isfinite(bias))):
                raise ModelError(f"{where}: layer {l} holds non-finite weights")
            for e in range(E):
                nets[e].weights.append(W[e].copy())
                nets[e].biases.append(bias[e].copy())
        if f"W{len(sizes) - 1}" in d:
            raise ModelError(f"{where}: more layers than settings.hidden {settings.hidden} describes")
        info = _json_load(d["info"], where, "provenance")
        hist = _json_load(d["history"], where, "history")
        history = DCFHistory(
            train_loss=np.asarray(d["train_loss"], dtype=np.float64).reshape(-1),
            valid_loss=np.asarray(d["valid_loss"], dtype=np.float64).reshape(-1),
            epochs=int(hist.get("epochs", 0)),
            stop_reason=str(hist.get("stop_reason", "")),
            best_epochs=np.asarray(hist.get("best_epochs", []), dtype=np.int64).reshape(-1),
            seconds=float(hist.get("seconds", 0.0)),
        )
        return cls(z=z, R_train=R, F_train=F, train_idx=train_idx.astype(np.int64), settings=settings,
                   elements=elements.astype(np.int64), networks=nets, history=history,
                   record=FitRecord.from_dict(info), **arrays)


def _json_load(a, where: str, what: str) -> dict:
    a = np.asarray(a)
    if a.size != 1 or a.dtype.kind not in "US":
        raise ModelError(f"{where}: {what} must be one JSON string, got {a.dtype} {a.shape}")
    try:
        out = json.loads(str(a.reshape(-1)[0]))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{where}: {what} is not valid JSON: {exc}") from None
    if not isinstance(out, dict):
        raise ModelError(f"{where}: {what} must be a JSON object, got {type(out).__name__}")
    return out


# -----------------------------------------------------------------------------
# training
# -----------------------------------------------------------------------------
def _check_inputs(R, F, z, train_idx) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        R = np.asarray(R, dtype=np.float64)
        F = np.asarray(F, dtype=np.float64)
        z_arr = np.asarray(z)
    except (TypeError, ValueError) as exc:
        raise DCFError(f"R, F and z must be numeric arrays: {exc}") from None
    if z_arr.ndim != 1 or z_arr.size < 2:
        raise DCFError(f"z must be a 1-D array of at least 2 atomic numbers, got shape {z_arr.shape}")
    if not np.issubdtype(z_arr.dtype, np.integer):
        if not (np.issubdtype(z_arr.dtype, np.floating) and np.all(np.isfinite(z_arr))
                and np.all(z_arr == np.round(z_arr))):
            raise DCFError(f"z must hold integer atomic numbers, got {z_arr.dtype}")
    z_arr = z_arr.astype(np.int64)
    if np.any(z_arr < 1) or np.any(z_arr > 118):
        raise DCFError(f"z must hold atomic numbers 1..118, got {sorted(set(z_arr.tolist()))}")
    n = z_arr.size
    if R.ndim != 3 or R.shape[1:] != (n, 3):
        raise DCFError(f"R must have shape (M, {n}, 3) for {n} atoms, got {R.shape}")
    if F.shape != R.shape:
        raise DCFError(f"F must have the shape of R {R.shape}, got {F.shape}")
    m = R.shape[0]
    if m < MIN_FRAMES:
        raise DCFError(f"the DCF network needs at least {MIN_FRAMES} training frames, got {m}")
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(F))):
        raise DCFError("R and F must be finite (found NaN or inf)")
    if train_idx is None:
        idx = np.arange(m, dtype=np.int64)
    else:
        idx = np.asarray(train_idx)
        if idx.shape != (m,) or not np.issubdtype(idx.dtype, np.integer):
            raise DCFError(f"train_idx must hold {m} integer frame indices, got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64)
    return R, F, z_arr, idx


def _ridge_solution(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge regression weights (D, K) of standardised targets y (n, K) on standardised features x (n, D).

    The penalty is ``alpha`` per sample (α·n on the normal equations), so it means the same for any n.
    """
    n, d = x.shape
    G = x.T @ x
    G[np.diag_indices(d)] += alpha * n
    return np.linalg.solve(G, x.T @ y)


def fit_dcf(R, F, z, *, train_idx=None, settings: DCFSettings = DCFSettings(), progress: Progress | None = None,
            should_stop: Callable[[], bool] | None = None) -> DCFModel:
    """Train a DCF-style force network.

    Parameters
    ----------
    R : array_like, shape (M, N, 3)
        Training positions, Å.
    F : array_like, shape (M, N, 3)
        Training forces, kcal/mol/Å.
    z : array_like, shape (N,)
        Atomic numbers.
    train_idx : array_like, shape (M,), optional
        The frames' indices in the source trajectory (default ``arange(M)``); recorded only.
    settings : DCFSettings
    progress : callable(fraction, message), optional
        Called once per epoch (and before training); may raise
        :class:`aff_app.cancel.Cancelled` to stop the fit.
    should_stop : callable() -> bool, optional
        Polled once per epoch; True stops the fit by raising :class:`aff_app.cancel.Cancelled`.

    Returns
    -------
    DCFModel
        With each element's network at its best validation epoch.

    Raises
    ------
    DCFError
        Bad shapes, non-finite values, fewer than 10 frames, bad settings.
    aff_app.cancel.Cancelled
        ``should_stop()`` returned True (or ``progress`` raised it).
    """
    t0 = time.perf_counter()
    if not isinstance(settings, DCFSettings):
        raise DCFError(f"settings must be a DCFSettings, got {type(settings).__name__}")
    R, F, z, train_idx = _check_inputs(R, F, z, train_idx)
    s = settings
    report = progress or (lambda fraction, message: None)

    def poll(message: str) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled(f"DCF training cancelled (at: {message})")

    m, n = R.shape[:2]
    rng = np.random.default_rng(s.seed)
    n_valid = int(round(s.valid_fraction * m)) if s.valid_fraction > 0 else 0
    n_valid = min(max(n_valid, 1 if s.valid_fraction > 0 else 0), m - 1)
    order = rng.permutation(m)
    valid_frames, fit_frames = np.sort(order[:n_valid]), np.sort(order[n_valid:])

    report(0.0, f"computing features of {m} frames")
    poll("features")
    spec = s.feature_spec(z)
    X, V = atom_features(R, z, spec)
    elements = np.asarray(spec.elements, dtype=np.int64)
    E, D, K = len(elements), X.shape[2], V.shape[2]
    sizes = (D, *s.hidden, K)

    # per element: standardised features, recovery matrices, targets (atoms of all frames of one share)
    data, skips = [], []
    x_mean, x_std = np.zeros((E, D)), np.ones((E, D))
    p_mean, p_std = np.zeros((E, K)), np.ones((E, K))
    for e, el in enumerate(elements):
        atoms = np.flatnonzero(z == el)

        def take(frames, X=X, V=V, atoms=atoms):
            x = X[frames][:, atoms].reshape(-1, D)
            v = V[frames][:, atoms].reshape(-1, K, 3)
            f = F[frames][:, atoms].reshape(-1, 3)
            return x, v, f

        xt, vt, ft = take(fit_frames)
        x_mean[e] = xt.mean(axis=0)
        x_std[e] = np.maximum(xt.std(axis=0), _STD_FLOOR)
        # the exact projections p = V·F of the training forces scale the outputs, so the network
        # starts at their mean and works in units of their spread
        pt = np.einsum("nkc,nc->nk", vt, ft)
        p_mean[e] = pt.mean(axis=0)
        p_std[e] = np.maximum(pt.std(axis=0), 1e-6 * max(float(pt.std()), 1e-12))
        f_scale = max(float(ft.std()), 1e-12)
        xs = (xt - x_mean[e]) / x_std[e]
        train = (xs, recovery_matrix(vt, s.ridge), ft)
        skips.append(_ridge_solution(xs, (pt - p_mean[e]) / p_std[e], s.linear_ridge))
        if n_valid:
            xv, vv, fv = take(valid_frames)
            valid = ((xv - x_mean[e]) / x_std[e], recovery_matrix(vv, s.ridge), fv)
        else:
            valid = None
        data.append((train, valid, f_scale, atoms.size))
    del X, V  # the per-element copies above are all training needs

    nets = [MLP.init(sizes, rng) for _ in range(E)]
    for net, skip in zip(nets, skips):
        net.skip[...] = skip
    opts = [Adam(net.params, s.learning_rate) for net in nets]
    best = [net.copy() for net in nets]
    best_loss = [np.inf] * E
    best_epoch = np.zeros(E, dtype=np.int64)
    since_best = [0] * E
    since_decay = [0] * E
    active = [True] * E
    last_train_mae = [np.inf] * E
    last_valid = [np.nan] * E
    train_hist, valid_hist = [], []

    def mae(e, net, share) -> float:
        # early stopping judges the mean absolute error: a few validation atoms whose vectors are
        # nearly collinear can carry errors far in the tail, which would make a squared score
        # follow them rather than the bulk
        x, A, f = share
        p = p_mean[e] + p_std[e] * net.forward(x)
        return float(np.mean(np.abs(recover(A, p) - f)))

    stop_reason = "max_epochs"
    epoch = 0
    t_train = time.perf_counter()
    for epoch in range(1, s.max_epochs + 1):
        poll(f"epoch {epoch}")
        for e in range(E):
            if not active[e]:
                continue
            (x, A, f), valid, f_scale, _ = data[e]
            net, opt = nets[e], opts[e]
            perm = rng.permutation(x.shape[0])
            total_abs = 0.0
            for b in range(0, perm.size, s.batch_size):
                idx = perm[b:b + s.batch_size]
                out, acts = net.forward(x[idx], keep=True)
                p = p_mean[e] + p_std[e] * out
                _, g = force_loss(A[idx], p, f[idx], f_scale)
                total_abs += float(np.sum(np.abs(recover(A[idx], p) - f[idx])))
                grads = net.backward(acts, g * p_std[e])
                # a batch holding an atom with nearly collinear vectors can give a huge gradient
                # (the recovery amplifies its weak direction): clip the global norm so one such
                # batch cannot throw the network out of its basin
                norm = math.sqrt(sum(float(np.vdot(gr, gr)) for gr in grads))
                if norm > s.grad_clip:
                    grads = [gr * (s.grad_clip / norm) for gr in grads]
                opt.step(grads)
            last_train_mae[e] = total_abs / (3 * perm.size)
            score = mae(e, net, valid) if valid is not None else last_train_mae[e]
            last_valid[e] = score
            if score < best_loss[e]:
                best_loss[e], best_epoch[e] = score, epoch
                best[e] = net.copy()
                since_best[e] = since_decay[e] = 0
            else:
                since_best[e] += 1
                since_decay[e] += 1
                if since_decay[e] >= s.lr_patience:
                    opt.lr *= s.lr_decay
                    since_decay[e] = 0
                if since_best[e] >= s.patience or opt.lr < s.min_learning_rate:
                    active[e] = False
        weights = np.array([d_[3] for d_ in data], dtype=float)
        train_hist.append(float(np.dot(weights, last_train_mae) / weights.sum()))
        valid_hist.append(float(np.dot(weights, last_valid) / weights.sum()) if n_valid else np.nan)
        elapsed = time.perf_counter() - t_train
        report(min(1.0, max(epoch / s.max_epochs, elapsed / s.time_limit_s)),
               f"epoch {epoch}: training force MAE {train_hist[-1]:.3f}, "
               + (f"validation {valid_hist[-1]:.3f} kcal/mol/Å" if n_valid else "no validation frames"))
        if not any(active):
            stop_reason = "early stopping"
            break
        if elapsed >= s.time_limit_s:
            stop_reason = "time limit"
            break

    seconds = time.perf_counter() - t0
    record = FitRecord(version=__version__, mode="dcf", n_train=m, criterion="validation",
                       timings=Timings(force_s=seconds, total_s=seconds))
    history = DCFHistory(train_loss=np.array(train_hist), valid_loss=np.array(valid_hist), epochs=epoch,
                         stop_reason=stop_reason, best_epochs=best_epoch, seconds=seconds)
    model = DCFModel(z=z, R_train=R.copy(), F_train=F.copy(), train_idx=train_idx, settings=s, elements=elements,
                     x_mean=x_mean, x_std=x_std, p_mean=p_mean, p_std=p_std, networks=best, history=history,
                     record=record)
    report(1.0, f"trained in {seconds:.1f} s ({epoch} epochs, {stop_reason})")
    return model

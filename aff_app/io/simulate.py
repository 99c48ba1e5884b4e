"""GFN2-xTB molecular dynamics: sample trajectories with energies and forces.

The app and the CLI use :func:`simulate_trajectory` to make a small, fully
reproducible training set when no ab initio data is at hand. The recipe:

1. Starting geometry: ASE's built-in molecule collection (``ase.build.molecule``,
   the g2 set, reachable by common names such as ``'benzene'``) or a SMILES
   string (given, or from :data:`SMILES`) embedded in 3D by RDKit (ETKDG with a
   fixed seed, then MMFF). Either way the geometry is relaxed with GFN2-xTB
   (BFGS, ``fmax`` 0.05 eV/Å, at most :data:`RELAX_MAX_STEPS` steps).
2. Maxwell–Boltzmann velocities at ``temperature_K`` (same seeded generator),
   centre-of-mass motion and rotation removed.
3. Langevin dynamics (``ase.md.langevin.Langevin``, friction
   :data:`FRICTION_PER_FS`) with the GFN2-xTB calculator of ``tblite``.
   ``equilibration_steps`` MD steps are run and discarded, then ``steps``
   frames are recorded, one every ``sample_every`` MD steps, each translated so
   that its centre of mass is at the origin (energies and forces are
   translation invariant, so this only stops the molecule drifting in a viewer).

ASE's ``fixcm=True`` option is not used: in ase 3.26 it removes the noise's
centre-of-mass part with a per-atom mass weighting that is only right when all
masses are equal; for benzene it heats the hydrogens to ~400 K (carbons ~310 K)
at a 300 K target, measured over 4 ps. With ``fixcm=False`` every degree of
freedom is thermostatted (benzene: 291 K hydrogens, 290 K carbons).

The same arguments give the same trajectory (one seeded ``numpy`` generator
drives the embedding seed, the initial velocities and the thermostat noise).

Results are returned in internal units (Å, kcal/mol, kcal/mol/Å); the
provenance records the calculator's native units (eV, Å) and every setting.
:func:`write_sample` stores a trajectory in the sGDML ``.npz`` layout.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from aff_app.errors import AFFError
from aff_app.io.trajectory import Provenance, Trajectory
from aff_app.units import energy_factor, force_factor

__all__ = [
    "MAX_STEPS",
    "DEFAULT_EQUILIBRATION_STEPS",
    "FRICTION_PER_FS",
    "SMILES",
    "ASE_NAMES",
    "SimulationError",
    "CalculatorError",
    "list_molecules",
    "simulate_trajectory",
    "write_sample",
]

#: Largest number of recorded frames one call may ask for.
MAX_STEPS = 20000
#: Largest ``sample_every`` (MD steps between recorded frames).
MAX_SAMPLE_EVERY = 1000
#: Largest ``equilibration_steps``.
MAX_EQUILIBRATION_STEPS = 100000
#: MD steps run and discarded before recording when ``equilibration_steps`` is None
#: (500 fs at 0.5 fs: five thermostat relaxation times 1/γ at γ = 0.01 fs⁻¹).
DEFAULT_EQUILIBRATION_STEPS = 1000
#: Langevin friction γ in 1/fs: weak enough to keep the vibrational dynamics
#: close to Newtonian, strong enough to thermalise in ~100 fs.
FRICTION_PER_FS = 0.01
#: Largest allowed time step: bonds to hydrogen (period ~11 fs) need ≲ 1 fs.
MAX_TIMESTEP_FS = 2.0
#: GFN2-xTB relaxation of the starting geometry.
RELAX_FMAX_EV_PER_A = 0.05
RELAX_MAX_STEPS = 300
#: Atoms closer than this times the sum of their covalent radii are bonded;
#: the molecule must not split into more bonded fragments than it started with.
BOND_SCALE = 1.5

#: Common names for molecules of ASE's g2 collection (``ase.build.molecule`` keys).
ASE_NAMES: dict[str, str] = {
    "benzene": "C6H6",
    "ethanol": "CH3CH2OH",
    "methanol": "CH3OH",
    "water": "H2O",
    "methane": "CH4",
    "ammonia": "NH3",
    "ethane": "C2H6",
    "ethylene": "C2H4",
    "acetylene": "C2H2",
    "propane": "C3H8",
    "acetone": "CH3COCH3",
    "acetaldehyde": "CH3CHO",
    "acetic acid": "CH3COOH",
    "formic acid": "HCOOH",
    "formaldehyde": "H2CO",
    "acetamide": "CH3CONH2",
    "dimethyl ether": "CH3OCH3",
    "hydrogen peroxide": "H2O2",
    "pyridine": "C5H5N",
    "pyrrole": "C4H4NH",
    "furan": "C4H4O",
    "thiophene": "C4H4S",
    "glyoxal": "OCHCHO",
    "butadiene": "butadiene",
}

#: SMILES of molecules not in ASE's collection (MD17 molecules and a few more).
SMILES: dict[str, str] = {
    "uracil": "O=C1C=CNC(=O)N1",
    "aspirin": "CC(=O)OC1=CC=CC=C1C(=O)O",
    "naphthalene": "c1ccc2ccccc2c1",
    "toluene": "Cc1ccccc1",
    # the enol form with the intramolecular hydrogen bond, as in MD17
    "malonaldehyde": r"O=C/C=C\O",
    "salicylic acid": "O=C(O)c1ccccc1O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "azobenzene": "c1ccc(cc1)/N=N/c1ccccc1",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "phenol": "Oc1ccccc1",
}

# Other spellings accepted by the name lookup (MD17 file stems).
_NAME_ALIASES = {"salicylic": "salicylic acid", "acetaminophen": "paracetamol", "malondialdehyde": "malonaldehyde"}

ProgressFn = Callable[[float, str], None]


class SimulationError(AFFError, ValueError):
    """Invalid simulation request (message says which value and what is allowed)."""


class CalculatorError(SimulationError, RuntimeError):
    """The GFN2-xTB calculator (or the molecule) failed during a simulation."""


# ----------------------------------------------------------------------------- names
def _normalise(name: str) -> str:
    key = " ".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())
    return _NAME_ALIASES.get(key, key)


def list_molecules() -> list[str]:
    """Names accepted by :func:`simulate_trajectory` without a SMILES.

    Returns
    -------
    list of str
        Sorted common names (ASE collection and the built-in SMILES table).
        The raw keys of ASE's g2 collection (e.g. ``'C6H6'``) are accepted too.
    """
    return sorted(set(ASE_NAMES) | set(SMILES))


def _ase_key(name: str) -> str | None:
    """The ``ase.build.molecule`` key for ``name``, or None."""
    from ase.build.molecule import extra
    from ase.collections import g2

    if name in g2.names or name in extra:
        return name
    return ASE_NAMES.get(_normalise(name))


# ----------------------------------------------------------------------------- geometry
def _atoms_from_smiles(smiles: str, seed: int):
    """Embed a SMILES in 3D (RDKit ETKDG + MMFF); returns (atoms, charge, unpaired electrons)."""
    from ase import Atoms
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")  # the library never prints; failures become exceptions
    try:
        mol = Chem.MolFromSmiles(smiles)
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None:
        raise SimulationError(f"invalid SMILES {smiles!r}: RDKit could not parse it; check brackets, ring closures and valences")
    mol = Chem.AddHs(mol)
    if mol.GetNumAtoms() < 2:
        raise SimulationError(f"SMILES {smiles!r} has {mol.GetNumAtoms()} atom(s) with hydrogens; molecular dynamics needs at least 2")
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) % (2**31)
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise SimulationError(f"RDKit could not embed SMILES {smiles!r} in 3D (seed {seed}); try another seed or an ASE molecule name")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    elif AllChem.UFFHasAllMoleculeParams(mol):
        AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
    atoms = Atoms(
        numbers=[a.GetAtomicNum() for a in mol.GetAtoms()],
        positions=mol.GetConformer().GetPositions(),
    )
    charge = int(Chem.GetFormalCharge(mol))
    unpaired = int(sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms()))
    return atoms, charge, unpaired


def _starting_atoms(molecule: str | None, smiles: str | None, seed: int):
    """(atoms, name, start description, charge, unpaired electrons) for a request."""
    from ase.build import molecule as ase_molecule

    if smiles is not None:
        smiles = str(smiles).strip()
        if not smiles:
            raise SimulationError("empty SMILES; give a SMILES string such as 'CCO' or a molecule name")
        atoms, charge, unpaired = _atoms_from_smiles(smiles, seed)
        name = str(molecule).strip() if molecule else smiles
        return atoms, name, f"smiles:{smiles}", charge, unpaired
    if molecule is None or not str(molecule).strip():
        raise SimulationError(f"give a molecule name or a SMILES; known names: {', '.join(list_molecules())}")
    key = _ase_key(str(molecule).strip())
    if key is not None:
        atoms = ase_molecule(key)
        if len(atoms) < 2:
            raise SimulationError(f"{molecule!r} has {len(atoms)} atom; molecular dynamics needs at least 2")
        unpaired = int(round(float(np.sum(atoms.get_initial_magnetic_moments()))))
        charge = int(round(float(np.sum(atoms.get_initial_charges()))))
        atoms.set_initial_magnetic_moments(None)
        return atoms, _normalise(molecule) if _normalise(molecule) in ASE_NAMES else key, f"ase.build.molecule:{key}", charge, unpaired
    norm = _normalise(molecule)
    if norm in SMILES:
        atoms, charge, unpaired = _atoms_from_smiles(SMILES[norm], seed)
        return atoms, norm, f"smiles:{SMILES[norm]}", charge, unpaired
    raise SimulationError(
        f"unknown molecule {molecule!r}; known names: {', '.join(list_molecules())} "
        "(or any key of ASE's g2 collection such as 'C6H6'); otherwise pass smiles=..."
    )


# ----------------------------------------------------------------------------- calculator
def _make_calculator(charge: int, unpaired: int):
    """The GFN2-xTB calculator (a separate function so tests can replace it)."""
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", charge=charge, multiplicity=unpaired + 1, verbosity=0)


def _calculator_exceptions() -> tuple[type[BaseException], ...]:
    from ase.calculators.calculator import CalculationFailed, InputError

    excs: list[type[BaseException]] = [CalculationFailed, InputError, RuntimeError, ValueError, FloatingPointError]
    try:
        from tblite.exceptions import TBLiteRuntimeError, TBLiteTypeError, TBLiteValueError

        excs += [TBLiteRuntimeError, TBLiteTypeError, TBLiteValueError]
    except ImportError:  # pragma: no cover - older tblite
        pass
    return tuple(excs)


def _fragments(z: np.ndarray, R: np.ndarray) -> int:
    """Number of bonded fragments (bond: distance < BOND_SCALE × sum of covalent radii)."""
    from ase.data import covalent_radii
    from scipy.sparse.csgraph import connected_components

    rc = covalent_radii[z]
    d = np.linalg.norm(R[:, None, :] - R[None, :, :], axis=-1)
    bonded = d < BOND_SCALE * (rc[:, None] + rc[None, :])
    return int(connected_components(bonded, directed=False)[0])


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("tblite", "ase", "rdkit", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


# ----------------------------------------------------------------------------- main entry
def _check_int(name: str, value, lo: int, hi: int, advice: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise SimulationError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise SimulationError(f"{name} = {value} is outside the allowed range {lo}..{hi}{advice}")
    return value


def simulate_trajectory(
    molecule: str | None = None,
    *,
    smiles: str | None = None,
    steps: int,
    temperature_K: float = 300.0,
    timestep_fs: float = 0.5,
    equilibration_steps: int | None = None,
    sample_every: int = 1,
    seed: int = 0,
    max_steps: int = MAX_STEPS,
    progress: ProgressFn | None = None,
) -> Trajectory:
    """Run GFN2-xTB Langevin dynamics and return the recorded frames.

    Parameters
    ----------
    molecule : str, optional
        A name from :func:`list_molecules` (or an ``ase.build.molecule`` key).
        With ``smiles`` given it is only the trajectory's name.
    smiles : str, optional
        SMILES of the molecule; takes precedence over ``molecule`` for the geometry.
    steps : int
        Number of frames M to record after equilibration, 1 ≤ M ≤ ``max_steps``.
    temperature_K : float
        Thermostat (and initial velocity) temperature in K, 0 < T ≤ 5000.
    timestep_fs : float
        MD time step in fs, 0 < Δt ≤ 2.
    equilibration_steps : int, optional
        MD steps run and discarded first (default :data:`DEFAULT_EQUILIBRATION_STEPS`).
    sample_every : int
        MD steps between recorded frames (1 ≤ k ≤ 1000); the trajectory spans
        ``steps * sample_every * timestep_fs`` fs.
    seed : int
        Seed of the one ``numpy`` generator behind embedding, velocities and noise.
    max_steps : int
        Cap on ``steps`` (default :data:`MAX_STEPS`).
    progress : callable(fraction, message), optional
        Called with a fraction in [0, 1] and a short message while running.

    Returns
    -------
    Trajectory
        ``z`` (N,), ``R`` (M, N, 3) in Å, ``E`` (M,) in kcal/mol, ``F`` (M, N, 3)
        in kcal/mol/Å. ``provenance.source`` is ``'simulated:<name>'``,
        ``label_set`` ``'GFN2-xTB'`` and ``settings`` holds every setting plus
        ``diagnostics`` (mean kinetic temperature over the 3N momenta).

    Raises
    ------
    SimulationError
        Bad arguments, unknown name, invalid SMILES.
    CalculatorError
        The calculator failed, or the molecule fell apart during the run.
    """
    max_steps = _check_int("max_steps", max_steps, 1, 10**9)
    steps = _check_int("steps", steps, 1, max_steps, f"; ask for at most {max_steps} frames (or raise max_steps)")
    sample_every = _check_int("sample_every", sample_every, 1, MAX_SAMPLE_EVERY)
    if equilibration_steps is None:
        equilibration_steps = DEFAULT_EQUILIBRATION_STEPS
    equilibration_steps = _check_int("equilibration_steps", equilibration_steps, 0, MAX_EQUILIBRATION_STEPS)
    seed = _check_int("seed", seed, 0, 2**63 - 1, "; use a non-negative integer")
    try:
        temperature_K = float(temperature_K)
        timestep_fs = float(timestep_fs)
    except (TypeError, ValueError) as exc:
        raise SimulationError(f"temperature_K and timestep_fs must be numbers, got {temperature_K!r}, {timestep_fs!r}") from exc
    if not (math.isfinite(temperature_K) and 0.0 < temperature_K <= 5000.0):
        raise SimulationError(f"temperature_K = {temperature_K} must lie in (0, 5000] K; 300 K is the usual choice")
    if not (math.isfinite(timestep_fs) and 0.0 < timestep_fs <= MAX_TIMESTEP_FS):
        raise SimulationError(
            f"timestep_fs = {timestep_fs} must lie in (0, {MAX_TIMESTEP_FS}] fs; bonds to hydrogen need ≲ 1 fs (0.5 fs is usual)"
        )

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(float(min(max(fraction, 0.0), 1.0)), message)

    from ase import units
    from ase.data import chemical_symbols
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from ase.optimize import BFGS

    rng = np.random.default_rng(seed)
    report(0.0, "building the starting geometry")
    # RDKit's embedding seed is drawn from the same generator so one seed fixes everything.
    embed_seed = int(rng.integers(0, 2**31 - 1))
    atoms, name, start, charge, unpaired = _starting_atoms(molecule, smiles, embed_seed)
    z = atoms.get_atomic_numbers().astype(np.int64)
    n_atoms = len(atoms)
    fail_excs = _calculator_exceptions()

    try:
        atoms.calc = _make_calculator(charge, unpaired)
        report(0.01, f"relaxing {name} ({n_atoms} atoms) with GFN2-xTB")
        opt = BFGS(atoms, logfile=None)
        converged = bool(opt.run(fmax=RELAX_FMAX_EV_PER_A, steps=RELAX_MAX_STEPS))
        relax_fmax = float(np.max(np.linalg.norm(atoms.get_forces(), axis=1)))
    except fail_excs as exc:
        raise CalculatorError(f"GFN2-xTB failed while relaxing the starting geometry of {name!r} ({n_atoms} atoms): {exc}") from exc
    n_frag0 = _fragments(z, atoms.get_positions())

    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    friction = FRICTION_PER_FS / units.fs
    # fixcm=False on purpose: see the module docstring (ase 3.26's fixcm overheats light atoms).
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=friction, fixcm=False, rng=rng)

    total = equilibration_steps + steps * sample_every
    R = np.empty((steps, n_atoms, 3))
    E = np.empty(steps)
    F = np.empty((steps, n_atoms, 3))
    T_kin = np.empty(steps)
    elements = sorted(set(z.tolist()))
    T_el = np.empty((steps, len(elements)))  # per-element kinetic temperature (thermostat check)
    masses = atoms.get_masses()
    dof = 3 * n_atoms  # all 3N momenta are thermostatted (fixcm=False)
    done = 0
    chunk = max(1, total // 100)

    def advance(n: int, phase: str) -> None:
        nonlocal done
        while n > 0:
            k = min(n, chunk)
            try:
                dyn.run(k)
            except fail_excs as exc:
                raise CalculatorError(
                    f"GFN2-xTB failed at MD step {done + 1} of {total} ({phase}, t = {done * timestep_fs:.1f} fs) "
                    f"for {name!r}: {exc}; try a lower temperature_K (now {temperature_K}) or timestep_fs (now {timestep_fs})"
                ) from exc
            n -= k
            done += k
            report(0.05 + 0.95 * done / total, f"{phase}: MD step {done}/{total}")

    if equilibration_steps:
        advance(equilibration_steps, "equilibration")
    for i in range(steps):
        advance(sample_every, "production")
        R[i] = atoms.get_positions() - atoms.get_center_of_mass()
        E[i] = atoms.get_potential_energy()  # cached by the last MD step: same geometry
        F[i] = atoms.get_forces()
        T_kin[i] = 2.0 * atoms.get_kinetic_energy() / (dof * units.kB)
        ke = 0.5 * masses * np.sum(atoms.get_velocities() ** 2, axis=1)
        for j, el in enumerate(elements):
            sel = z == el
            T_el[i, j] = 2.0 * ke[sel].sum() / (3 * sel.sum() * units.kB)
        if not (np.isfinite(E[i]) and np.all(np.isfinite(F[i]))):
            raise CalculatorError(f"GFN2-xTB returned non-finite energy/forces at frame {i} (MD step {done}) for {name!r}")
        n_frag = _fragments(z, R[i])
        if n_frag > n_frag0:
            raise CalculatorError(
                f"{name!r} fell apart at frame {i} (MD step {done}, t = {done * timestep_fs:.1f} fs): "
                f"{n_frag} bonded fragments instead of {n_frag0}; lower temperature_K (now {temperature_K}) "
                f"or timestep_fs (now {timestep_fs})"
            )

    versions = _versions()
    settings: dict[str, Any] = {
        "calculator": f"GFN2-xTB (tblite {versions['tblite']})",
        "method": "GFN2-xTB",
        "charge": charge,
        "multiplicity": unpaired + 1,
        "thermostat": "Langevin (ase.md.langevin, fixcm=False; frames recentred on the centre of mass)",
        "temperature_K": temperature_K,
        "timestep_fs": timestep_fs,
        "friction_per_fs": FRICTION_PER_FS,
        "equilibration_steps": equilibration_steps,
        "sample_every": sample_every,
        "steps": steps,
        "seed": seed,
        "start": start,
        "relaxation": {
            "optimizer": "ase.optimize.BFGS",
            "fmax_eV_per_A": RELAX_FMAX_EV_PER_A,
            "max_steps": RELAX_MAX_STEPS,
            "converged": converged,
            "final_fmax_eV_per_A": relax_fmax,
        },
        "versions": versions,
        "diagnostics": {
            "mean_kinetic_temperature_K": float(np.mean(T_kin)),
            "std_kinetic_temperature_K": float(np.std(T_kin)),
            "kinetic_temperature_dof": dof,
            "mean_kinetic_temperature_by_element_K": {
                chemical_symbols[el]: float(np.mean(T_el[:, j])) for j, el in enumerate(elements)
            },
        },
    }
    report(1.0, f"done: {steps} frames of {name}")
    return Trajectory(
        z=z,
        R=R,
        E=E * energy_factor("eV"),
        F=F * force_factor("eV", "Å"),
        name=name,
        provenance=Provenance(
            source=f"simulated:{name}",
            energy_unit="eV",
            length_unit="Å",
            label_set="GFN2-xTB",
            settings=settings,
        ),
    )


# ----------------------------------------------------------------------------- writer
def write_sample(traj: Trajectory, path: str | Path, *, dtype=np.float64) -> Path:
    """Write a trajectory in the sGDML ``.npz`` dataset layout (no pickled objects).

    Parameters
    ----------
    traj : Trajectory
        Must carry energies and forces (internal units).
    path : str or Path
        Output file; ``.npz`` is appended by numpy when missing.
    dtype : numpy dtype
        Storage type of ``R`` and ``F`` (``float32`` halves the size); ``E`` is float64.

    Returns
    -------
    Path
        The file written.

    Notes
    -----
    Keys: ``type`` ('d'), ``name``, ``theory``, ``code_version``, ``R`` (M, N, 3) Å,
    ``z`` (N,), ``E`` (M, 1) kcal/mol, ``F`` (M, N, 3) kcal/mol/Å, ``r_unit``
    ('Ang'), ``e_unit`` ('kcal/mol'), ``md5`` (sGDML's fingerprint of z, R, E, F),
    ``label_set`` (e.g. 'GFN2-xTB') and ``settings`` (JSON string of the
    provenance settings plus its source). All are plain arrays or unicode
    scalars: the file loads with ``np.load(path, allow_pickle=False)``.
    """
    if not traj.has_labels:
        raise SimulationError("write_sample needs a trajectory with energies E and forces F; this one has none")
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    R = np.ascontiguousarray(traj.R, dtype=dtype)
    F = np.ascontiguousarray(traj.F, dtype=dtype)
    E = np.ascontiguousarray(traj.E, dtype=np.float64).reshape(-1, 1)
    z = np.ascontiguousarray(traj.z, dtype=np.int64)
    md5 = hashlib.md5()
    for arr in (z, R, E, F):  # same recipe as sgdml.utils.io.dataset_md5
        md5.update(hashlib.md5(arr.ravel()).digest())
    prov = traj.provenance
    meta = {
        "source": prov.source,
        "label_set": prov.label_set,
        "original_units": {"energy": prov.energy_unit, "length": prov.length_unit},
        "stored_units": {"energy": "kcal/mol", "length": "Ang", "force": "kcal/mol/Ang"},
        "stored_dtype": np.dtype(dtype).name,
        **prov.settings,
    }
    theory = str(prov.settings.get("calculator", prov.label_set or "unknown"))
    path.parent.mkdir(parents=True, exist_ok=True)
    from aff_app import __version__

    np.savez_compressed(
        path,
        type=np.array("d"),
        code_version=np.array(f"aff_app {__version__}"),
        name=np.array(traj.name or path.stem),
        theory=np.array(theory),
        R=R,
        z=z,
        E=E,
        F=F,
        r_unit=np.array("Ang"),
        e_unit=np.array("kcal/mol"),
        md5=np.array(md5.hexdigest()),
        label_set=np.array(prov.label_set or "GFN2-xTB"),
        settings=np.array(json.dumps(meta, sort_keys=True, ensure_ascii=False)),
    )
    return path

"""One point of the reproduction: a model fitted and scored through the one workflow (aff_app.workflows.pipeline)."""

from __future__ import annotations

import dataclasses


from aff_app.workflows import pipeline
from aff_app.symmetry import SymmetryInfo
from aff_app.reproduce.settings import METHOD_AFF, METHOD_GDML, METHOD_SGDML, Progress, ReproduceSettings, _noop

from aff_app.reproduce.planning import ReproSplit

# ---------------------------------------------------------------------------
# one model
# ---------------------------------------------------------------------------
def point(molecule, label_set, method, m, *, force_mae, energy_mae, train_s, extra=None) -> dict:
    out = {"molecule": molecule, "label_set": label_set, "method": method, "M": int(m),
           "force_mae": force_mae, "energy_mae": energy_mae, "train_s": train_s,
           "pci": None, "lci": None, "l_norm": None, "delta_p": None}
    out.update(extra or {})
    return out


def _timings(t, t_sym: float, t_pred: float) -> dict:
    return {"symmetry_s": t_sym, "force_fit_s": t.force_s, "energy_fit_s": t.energy_s, "test_prediction_s": t_pred,
            "force_search_s": t.search_s, "force_build_s": t.build_s, "force_cholesky_s": t.cholesky_s}


def aff_point(traj, split: ReproSplit, sym: SymmetryInfo, t_sym: float, m: int, s: ReproduceSettings,
               molecule: str, progress: Progress = _noop) -> dict:
    """AFF at M frames, scored on the split's evaluation frames (a module-level task: plain inputs)."""
    settings = pipeline.TrainSettings(mode="aff", gamma=s.gamma, lam=s.lam, search_frames=s.search_frames,
                                      energy_gamma=s.energy_gamma, energy_lam=s.energy_lam, budget_bytes=s.memory_bytes)
    trained = pipeline.fit(traj, split.train(m), settings, symmetry=sym, seed=s.seed,
                           progress=lambda f, msg: progress(0.6 * f, msg))
    fm, em, t = trained.force, trained.energy, trained.timings
    progress(0.65, f"predicting {split.eval.size} test frames")
    held = pipeline.evaluate(trained, traj, test_idx=split.eval, progress=lambda f, msg: progress(0.65 + 0.3 * f, msg))
    rep = held.report(s.level)
    progress(1.0, "done")
    return point(molecule, traj.provenance.label_set, METHOD_AFF, m, force_mae=rep["force_mae"],
                  energy_mae=rep["energy_mae"], train_s=t_sym + t.force_s + (t.energy_s or 0.0), extra={
                      "pci": rep["pci"], "lci": rep["lci"], "l_norm": rep["l_norm"], "delta_p": rep["delta_p"],
                      "force_rmse": rep["force_rmse"], "energy_rmse": rep["energy_rmse"],
                      "energy_pci": rep["energy_pci"], "energy_lci": rep["energy_lci"],
                      "gamma": fm.gamma, "lam": fm.lam,
                      "energy_gamma": None if em is None else em.gamma, "energy_lam": None if em is None else em.lam,
                      "hyper_converged": fm.record.search.converged,
                      "lam_refine": dataclasses.asdict(fm.record.lam_check),
                      "calibration": dataclasses.asdict(fm.record.calibration),
                      "n_sets": len(fm.pe_sets), "n_perms": int(len(fm.perms)),
                      "timings": _timings(t, t_sym, held.predict_s),
                      "energy_method": None if em is None else em.description,
                      "interval": "latent force, mean ± 1.96 sd",
                      "warnings": trained.warnings,
                  })


def baseline_point(traj, split, sym, t_sym, mode, m, s, molecule, progress: Progress = _noop) -> dict:
    """Our GDML or sGDML mode at M frames, means only on the evaluation frames (a module-level task)."""
    settings = pipeline.TrainSettings(mode=mode, gamma=s.gamma, lam=s.lam,
                                      search_frames=s.baseline_search_frames or s.search_frames, search_fraction=0.0,
                                      budget_bytes=s.memory_bytes)
    trained = pipeline.fit(traj, split.train(m), settings, symmetry=sym if mode == "sgdml" else None, seed=s.seed,
                           progress=lambda f, msg: progress(0.7 * f, msg))
    fm, t = trained.force, trained.timings
    t_sym = t_sym if mode == "sgdml" else 0.0
    progress(0.75, f"predicting {split.eval.size} test frames")
    # means only: one all-atom kernel makes every sd a solve with 3N right-hand sides
    held = pipeline.evaluate(trained, traj, test_idx=split.eval, with_std=False)
    rep = held.report(s.level)
    progress(1.0, "done")
    return point(molecule, traj.provenance.label_set, METHOD_GDML if mode == "gdml" else METHOD_SGDML, m,
                  force_mae=rep["force_mae"], energy_mae=rep["energy_mae"],
                  train_s=t_sym + t.force_s + (t.energy_s or 0.0),
                  extra={"gamma": fm.gamma, "lam": fm.lam, "n_perms": int(len(fm.perms)),
                         "hyper_converged": fm.record.search.converged,
                         "timings": _timings(t, t_sym, held.predict_s),
                         "energy_method": "integrated force GP plus a constant (fit_integrated_energy)",
                         "warnings": trained.warnings})



"""Measured time of each part of "train and test" against aff_app.gp.budget.estimate_time (bundled samples).

Run: .venv/bin/python benchmarks/time_estimate.py > docs/bench_time_estimate_run.log
"""
import time, numpy as np
from aff_app.io.files import load_trajectory
from aff_app.workflows import pipeline, learning
from aff_app.workflows.training import resolve_symmetry
for mol in ['benzene','uracil','aspirin']:
    t = load_trajectory(f'sample_data/{mol}.npz')
    sym = resolve_symmetry(t)
    for M in (100, 300, 800):
        ts=time.perf_counter()
        tr = pipeline.train(t, n_train=M, seed=0, symmetry=sym)
        tm=time.perf_counter()
        held = pipeline.evaluate(tr, t, n_test=200)
        te=time.perf_counter()
        T = tr.force.record.timings
        est = learning.cost_for('aff', M, t.n_atoms, sym)
        te2 = learning.time_for("aff", M, t.n_atoms, sym, search=True, energy=True, n_test=200); print(f"EST {te2.search_s:.2f} {te2.fit_s:.2f} {te2.energy_s:.2f} {te2.held_out_s:.2f} tot {te2.total_s:.1f} meas {te-ts:.1f}"); print(f"{mol:8s} M={M:4d} est_fit={est.seconds:6.2f} search={T.search_s:6.2f} build={T.build_s:6.2f} chol={T.cholesky_s:6.2f} force={T.force_s:6.2f} energy={T.energy_s:6.2f} heldout={te-tm:6.2f} sets={[len(s) for s in sym.pe_sets]} perms={sym.n_perms}", flush=True)

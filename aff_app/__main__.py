"""Entry point of ``python -m aff_app`` and of the ``aff-app`` console script (pyproject.toml)."""

import atexit
import os
import sys

# Before numpy and scipy load their OpenBLAS (each wheel bundles its own, read once): idle BLAS
# workers spin-wait 2^20 cycles (~0.4 ms) instead of the default 2^28 (~0.1 s) before sleeping.
# After every Cholesky factorisation the default spin took a core from the kernel assembly that
# follows it (uracil, M = 1000, one buffer reused by twelve PE sets: assembly 0.47 s -> 0.34 s,
# whole `train` process 2.1 s -> 1.9 s); back-to-back BLAS calls still find their workers awake.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")


def run() -> None:
    """``python -m aff_app`` and the ``aff-app`` console script: run the CLI, then leave without teardown."""
    from aff_app.cli import main

    code = main()
    # Everything is written, closed and printed by now; the exit handlers run as usual, but
    # the interpreter's teardown of numba's and LLVM's object graph (~0.13 s per run on the
    # 2-core machine: more than a fixed-γ/λ fit's symmetry search, build of one kernel and
    # save together) is skipped, as the OS reclaims the process anyway.
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (`... | head`): nothing left to say
        pass
    os._exit(code)


if __name__ == "__main__":
    run()

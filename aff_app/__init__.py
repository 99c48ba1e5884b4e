"""aff_app: the atomized force field (AFF) Gaussian-process emulator and its app.

Internal units (stated once, used everywhere inside the library):
energies in kcal/mol, lengths in Å, forces in kcal/mol/Å — the units of
MD17/sGDML files. Conversions happen at the edges (``aff_app.units``).
"""

__version__ = "0.1.0"

"""A DCF-style direct covariant force network (numpy only), after Mailoa et al., Nat. Mach. Intell. 2019.

``features`` (per-atom invariant symmetry functions and covariant vectors),
``network`` (a hand-written tanh MLP, Adam, the least-squares force recovery),
``model`` (:func:`fit_dcf`, :class:`DCFModel` and its arrays).
"""

from aff_app.dcf.model import DCF_FORMAT, DCFError, DCFHistory, DCFModel, DCFSettings, fit_dcf

__all__ = ["DCF_FORMAT", "DCFError", "DCFHistory", "DCFModel", "DCFSettings", "fit_dcf"]

"""A small fully connected network with hand-written forward and backward passes, and Adam.

One :class:`MLP` per element maps an atom's standardised invariant features
(D values) to its K projections p_k (tanh hidden layers, linear output).
The least-squares recovery of the force from the projections
(:func:`recovery_matrix`, :func:`recover`) is linear in p, so the loss of the
recovered force backpropagates through one 3×K matrix per atom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MLP", "Adam", "recovery_matrix", "recover", "force_loss"]


@dataclass
class MLP:
    """A tanh network with a linear skip connection: out = x S + MLP(x).

    Attributes
    ----------
    weights : list of ndarray
        ``weights[l]`` has shape (n_in, n_out) of layer l.
    biases : list of ndarray
        ``biases[l]`` has shape (n_out,).
    skip : ndarray, shape (n_in, n_out_last)
        The linear path from inputs to outputs (started at a ridge-regression solution by
        the fit, so training begins from the linear model and the hidden layers learn what
        it misses).
    """

    weights: list
    biases: list
    skip: np.ndarray

    @classmethod
    def init(cls, sizes: tuple[int, ...], rng: np.random.Generator) -> "MLP":
        """Glorot-normal weights (tanh keeps unit-variance inputs in its linear range), zero biases.

        The output layer starts 10× smaller so that the initial projections sit
        at the output scaling's mean (see :func:`aff_app.dcf.model.fit_dcf`).
        """
        ws, bs = [], []
        for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            scale = np.sqrt(2.0 / (a + b)) * (0.1 if l == len(sizes) - 2 else 1.0)
            ws.append(rng.standard_normal((a, b)) * scale)
            bs.append(np.zeros(b))
        return cls(ws, bs, np.zeros((sizes[0], sizes[-1])))

    @property
    def params(self) -> list:
        """Weights and biases interleaved (W0, b0, W1, b1, ..., S), the order of :meth:`backward`'s gradients."""
        out = []
        for w, b in zip(self.weights, self.biases):
            out += [w, b]
        return out + [self.skip]

    def copy(self) -> "MLP":
        return MLP([w.copy() for w in self.weights], [b.copy() for b in self.biases], self.skip.copy())

    def forward(self, x: np.ndarray, *, keep: bool = False):
        """Outputs (n, n_out) of inputs (n, n_in); with ``keep`` also the hidden activations for :meth:`backward`."""
        acts = [x]
        h = x
        last = len(self.weights) - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if l < last:
                h = np.tanh(h)
            if keep:
                acts.append(h)
        h = h + x @ self.skip
        return (h, acts) if keep else h

    def backward(self, acts: list, grad_out: np.ndarray) -> list:
        """Gradients of a loss w.r.t. :attr:`params`, given dLoss/dOutput (n, n_out) and :meth:`forward`'s activations."""
        grads = [None] * (2 * len(self.weights) + 1)
        grads[-1] = acts[0].T @ grad_out
        g = grad_out
        for l in range(len(self.weights) - 1, -1, -1):
            grads[2 * l] = acts[l].T @ g
            grads[2 * l + 1] = g.sum(axis=0)
            if l > 0:
                g = (g @ self.weights[l].T) * (1.0 - acts[l] ** 2)  # tanh' = 1 − tanh²
        return grads


class Adam:
    """Adam (Kingma & Ba) over a list of arrays, updated in place."""

    def __init__(self, params: list, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.params = params
        self.lr = float(lr)
        self.b1, self.b2, self.eps = beta1, beta2, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list) -> None:
        self.t += 1
        c1 = 1.0 - self.b1**self.t
        c2 = 1.0 - self.b2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= self.b1
            m += (1.0 - self.b1) * g
            v *= self.b2
            v += (1.0 - self.b2) * (g * g)
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


def recovery_matrix(V: np.ndarray, ridge: float) -> np.ndarray:
    """The per-atom map A = (VᵀV + εI)⁻¹ Vᵀ from projections to force (method.md eq. 24).

    Parameters
    ----------
    V : ndarray, shape (n, K, 3)
        Each atom's K covariant vectors (rows of its K×3 matrix).
    ridge : float
        Relative ridge: ε = ridge · tr(VᵀV)/3 (scale-free, so it keeps degenerate
        geometries, e.g. collinear neighbours, stable without biasing good ones).

    Returns
    -------
    A : ndarray, shape (n, 3, K)
    """
    G = np.einsum("nkc,nkd->ncd", V, V)  # (n, 3, 3)
    eps = ridge * np.trace(G, axis1=1, axis2=2) / 3.0
    # the floor keeps an atom with no neighbour inside the cutoff (V = 0) finite: its force is then 0
    G = G + (np.maximum(eps, 1e-300))[:, None, None] * np.eye(3)
    return np.linalg.solve(G, V.transpose(0, 2, 1))


def recover(A: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Forces (n, 3) from projections p (n, K) through A (n, 3, K)."""
    return np.einsum("nck,nk->nc", A, p)


def force_loss(A: np.ndarray, p: np.ndarray, F: np.ndarray, scale: float = 1.0) -> tuple[float, np.ndarray]:
    """Mean squared force error per component, (‖A p − F‖² / 3n) / scale², and its gradient w.r.t. p (n, K)."""
    n = p.shape[0]
    r = recover(A, p) - F
    loss = float(np.sum(r * r)) / (3.0 * n * scale**2)
    grad = np.einsum("nck,nc->nk", A, r) * (2.0 / (3.0 * n * scale**2))
    return loss, grad

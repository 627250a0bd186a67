"""The curvature of a text's loss over its input embeddings: Hutchinson's trace estimate and
Lanczos's extreme eigenvalues, from Hessian-vector products.

L(e) is the mean next-token NLL of the text with its token embeddings e (T x d, the model's own
input embedding of each token; everything else fixed), H = d^2 L / de^2 (Td x Td). A Hessian-
vector product is a second backward pass through the gradient's graph, which is built once per
text and kept only while that text is measured: one text's graph at a time, whatever the count
of probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class TextCurvature:
    loss: float
    tokens: int
    trace: float  # Hutchinson's estimate of tr(H)
    trace_se: float  # its standard error over the probes
    eig_min: float | None = None  # Lanczos, where asked
    eig_max: float | None = None
    logprobs: np.ndarray | None = None  # per predicted token, for the light scan's scores
    mu: np.ndarray | None = None  # mean and std of log p under the model (Min-K%++)
    sigma: np.ndarray | None = None
    top1: np.ndarray | None = None  # log p of the top-1 token (Gap-K%)


class EmbeddingLoss:
    """L(e) for one text, and products of its Hessian with vectors."""

    def __init__(self, model, ids: list[int]):
        self.model = model
        device = next(model.parameters()).device
        self.ids = torch.tensor([ids], device=device)
        with torch.no_grad():
            self.e0 = model.get_input_embeddings()(self.ids)[0].detach()
        self.e = self.e0.clone().requires_grad_(True)
        out = model(inputs_embeds=self.e[None], labels=self.ids)
        self.loss = out.loss
        self.logits = out.logits[0, :-1].detach()
        (self.grad,) = torch.autograd.grad(self.loss, self.e, create_graph=True)

    @property
    def dim(self) -> int:
        return self.e0.numel()

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v, v and the result flat (Td)."""
        (hv,) = torch.autograd.grad(self.grad, self.e, grad_outputs=v.view_as(self.e), retain_graph=True)
        return hv.reshape(-1)

    def token_stats(self) -> tuple[np.ndarray, ...]:
        """Per predicted token: log p of the actual token, the mean and std of log p under the
        model's distribution (Min-K%++) and the top-1 token's log p, as the scan's scorer computes
        them."""
        logp = torch.log_softmax(self.logits.double(), dim=-1)
        lp = logp.gather(-1, self.ids[0, 1:, None]).squeeze(-1)
        p = logp.exp()
        mu = (p * logp).sum(-1)
        sigma = (p * (logp - mu[:, None]) ** 2).sum(-1).sqrt()
        return lp.cpu().numpy(), mu.cpu().numpy(), sigma.cpu().numpy(), logp.amax(-1).cpu().numpy()


def hutchinson(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, probes: int, generator: torch.Generator,
               like: torch.Tensor) -> tuple[float, float]:
    """tr(H) as the mean of v'Hv over Rademacher probes v, and the mean's standard error."""
    if probes < 2:
        raise ValueError(f"need at least 2 probes for a standard error, not {probes}")
    values = []
    for _ in range(probes):
        v = (torch.randint(0, 2, (dim,), generator=generator) * 2 - 1).to(like)
        values.append(float(v @ hvp(v)))
    values = np.asarray(values)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(probes))


def lanczos(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, steps: int, generator: torch.Generator,
            like: torch.Tensor) -> tuple[float, float]:
    """The smallest and largest eigenvalue of H by `steps` Lanczos iterations with full
    reorthogonalisation (exact once steps reaches dim; the extremes converge first)."""
    steps = min(steps, dim)
    q = torch.randn(dim, generator=generator).to(like)
    q /= q.norm()
    basis, alphas, betas = [q], [], []
    for j in range(steps):
        w = hvp(basis[-1])
        alphas.append(float(w @ basis[-1]))
        Q = torch.stack(basis)
        for _ in range(2):  # twice is enough (Kahan-Parlett)
            w = w - Q.T @ (Q @ w)
        beta = float(w.norm())
        if j == steps - 1 or beta <= 1e-10 * max(abs(a) for a in alphas):  # an invariant subspace: exact
            break
        betas.append(beta)
        basis.append(w / beta)
    T = np.diag(alphas) + np.diag(betas[:len(alphas) - 1], 1) + np.diag(betas[:len(alphas) - 1], -1)
    eig = np.linalg.eigvalsh(T)
    return float(eig[0]), float(eig[-1])


def measure(model, ids: list[int], probes: int, lanczos_steps: int | None, seed: int) -> TextCurvature:
    """One text: its loss, the trace estimate (and eigenvalue extremes when lanczos_steps), and
    its token statistics. The graph is freed on return."""
    f = EmbeddingLoss(model, ids)
    g = torch.Generator().manual_seed(seed)
    trace, se = hutchinson(f.hvp, f.dim, probes, g, f.e0)
    lo = hi = None
    if lanczos_steps:
        lo, hi = lanczos(f.hvp, f.dim, lanczos_steps, g, f.e0)
    lp, mu, sigma, top1 = f.token_stats()
    return TextCurvature(loss=float(f.loss.detach()), tokens=len(ids), trace=trace, trace_se=se, eig_min=lo, eig_max=hi,
                         logprobs=lp, mu=mu, sigma=sigma, top1=top1)

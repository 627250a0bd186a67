"""What every backend needs of the next-token distribution at each scored position: the actual
token's log-prob, the mean and std of log p under the model's own distribution (Min-K%++:
mu_t = E_z~p[log p(z)], sigma_t^2 = Var_z~p[log p(z)]), and the top-1 token's log-prob (Gap-K%:
max logit - log-sum-exp, which the running maximum gives for free).

Computed without ever holding rows x V logits at once, and reading the LM head's weights once
per call: the head runs over slices of the vocabulary for all rows together, and each slice's
log-sum-exp, mean and variance are merged into running ones (the parallel-variance formula with
weights; each slice's variance is taken about its own mean, so nothing cancels in fp32). Slicing
by positions instead, as before, read the whole head (113 MB for SmolLM2) again for every few
positions: on a CPU that cost as much as the transformer itself.

Rows are the positions to score only (no padding: the callers select them), so a padded batch
costs its real tokens here.
"""

from __future__ import annotations

import numpy as np
import torch

# fp32 logits held at once: on a CPU, tiles that stay in cache are fastest; on a GPU, big tiles
# mean fewer kernel launches
CHUNK_BYTES = {"cpu": 8 << 20, "cuda": 512 << 20}
MIN_SLICE = 1024  # vocabulary rows per slice at least: fewer rows per block beyond that


def _budget(device: torch.device) -> int:
    return CHUNK_BYTES["cuda" if device.type == "cuda" else "cpu"]


def _tile(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(max, sum of exp(x - max), mean, variance) of each row of fp32 logits under its own
    softmax; x is overwritten."""
    m = x.amax(-1)
    x.sub_(m[:, None])
    e = torch.exp(x)
    z = e.sum(-1)
    mean = torch.bmm(e.unsqueeze(1), x.unsqueeze(2)).view(-1) / z
    x.sub_(mean[:, None])  # centred: the variance without E[x^2] - E[x]^2's cancellation
    e.mul_(x)
    var = torch.bmm(e.unsqueeze(1), x.unsqueeze(2)).view(-1) / z
    return m, z, mean + m, var


def _merge(acc: tuple | None, tile: tuple) -> tuple:
    """Two disjoint parts of the vocabulary as one: Chan et al.'s pairwise mean/variance update,
    each part weighted by its share of the probability mass."""
    if acc is None:
        return tile
    m, z, mean, var = acc
    mj, zj, meanj, varj = tile
    top = torch.maximum(m, mj)
    a, b = z * torch.exp(m - top), zj * torch.exp(mj - top)
    total = a + b
    wa, wb = a / total, b / total
    d = meanj - mean
    return top, total, mean + wb * d, wa * var + wb * varj + wa * wb * d * d


def _finish(acc: tuple, target_logit: torch.Tensor) -> tuple[torch.Tensor, ...]:
    m, z, mean, var = acc
    lse = m + torch.log(z)
    return ((target_logit - lse).cpu(), (mean - lse).cpu(), var.clamp_min(0).sqrt().cpu(), (m - lse).cpu())


def head_parts(head):
    """(weight, bias, transform of the logits) of a linear LM head, or None when the head is
    something else (then it is called whole)."""
    weight = getattr(head, "weight", None)
    if isinstance(head, torch.nn.Linear):
        return weight, head.bias, None
    if hasattr(head, "transform") and weight is not None:  # scanner.scoring.lm_head.LMHead
        return weight, head.bias, head.transform
    return None


def row_statistics(hidden: torch.Tensor, targets: torch.Tensor, head) -> tuple[torch.Tensor, ...]:
    """For each row of final hidden states (N x H) and the token that follows it (N): the
    token's log-prob, mu and sigma of log p, and the top-1 token's log-prob; each (N,) float32
    on the CPU."""
    N, parts = hidden.shape[0], head_parts(head)
    if N == 0:
        return tuple(torch.empty(0) for _ in range(4))
    budget = _budget(hidden.device)
    if parts is None:  # a head that is not a plain linear map: called whole, on blocks of rows
        rows = max(1, budget // (4 * head(hidden[:1]).shape[-1]))
        return _cat([logits_statistics(head(hidden[r0:r0 + rows]), targets[r0:r0 + rows]) for r0 in range(0, N, rows)])
    weight, bias, transform = parts
    rows = max(1, min(N, budget // (4 * MIN_SLICE)))  # each block of rows reads the whole head once
    out = []
    for r0 in range(0, N, rows):
        h, t = hidden[r0:r0 + rows], targets[r0:r0 + rows]
        step = max(1, budget // (4 * h.shape[0]))
        acc, target_logit = None, torch.empty(h.shape[0], device=h.device)
        for v0 in range(0, weight.shape[0], step):
            x = torch.nn.functional.linear(h, weight[v0:v0 + step], None if bias is None else bias[v0:v0 + step])
            x = (transform(x) if transform else x).float()
            local = t - v0
            hit = ((local >= 0) & (local < x.shape[1])).nonzero().view(-1)
            target_logit[hit] = x[hit, local[hit]]
            acc = _merge(acc, _tile(x))
        out.append(_finish(acc, target_logit))
    return _cat(out)


def logits_statistics(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same from logits a model computed itself (N x V), for a head that cannot run apart
    from its model; in blocks of rows of CHUNK_BYTES."""
    if logits.shape[0] == 0:
        return tuple(torch.empty(0) for _ in range(4))
    rows = max(1, _budget(logits.device) // (4 * logits.shape[-1]))
    out = []
    for r0 in range(0, logits.shape[0], rows):
        block = logits[r0:r0 + rows]
        target_logit = block.gather(-1, targets[r0:r0 + rows, None]).view(-1).float()
        out.append(_finish(_tile(block.to(torch.float32, copy=True)), target_logit))  # (_tile overwrites its copy)
    return _cat(out)


def per_text(stats: tuple[torch.Tensor, ...], sizes: list[int]) -> list[tuple[np.ndarray, ...]]:
    """Rows laid text after text, cut back into each text's (log-prob, mu, sigma, top-1 log-prob)
    in float64."""
    return [tuple(x.numpy().astype(np.float64) for x in parts) for parts in zip(*(s.split(sizes) for s in stats))]


def _cat(parts: list[tuple]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat(c) for c in zip(*parts))

"""Membership scores and fidelity features as pure numpy functions, shared by every backend.

Inputs per text are the log-probs of its actual tokens (position t given tokens < t) and, for
Min-K%++, the mean and std of log p(z | prefix) under the model's own next-token distribution at
each position (mu_t = E_z~p[log p(z)], sigma_t^2 = E_z~p[(log p(z) - mu_t)^2]; Zhang et al. 2024).

Directions, as stored: loss and zlib_ratio are lower for members; min_k and min_k_pp are higher
for members; neighborhood (loss - mean neighbor loss) is lower (more negative) for members.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

K_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)
# the column names of those scores, used by the feature schema and the detectors
MIN_K_NAMES = [f"min_k_{round(k * 100)}" for k in K_FRACTIONS]
MIN_K_PP_NAMES = [f"min_k_pp_{round(k * 100)}" for k in K_FRACTIONS]


def loss(token_logprobs: np.ndarray) -> float:
    """Mean negative log-likelihood per scored token."""
    return float(-np.mean(token_logprobs))


def zlib_entropy(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def zlib_ratio(loss_value: float, text: str) -> float:
    """Loss over zlib-compressed length (Carlini et al. 2021): normalises away plain redundancy."""
    return loss_value / zlib_entropy(text)


def _lowest_mean(values: np.ndarray, k: float) -> float:
    n = max(1, int(math.floor(len(values) * k)))
    return float(np.mean(np.partition(values, n - 1)[:n]))


def min_k(token_logprobs: np.ndarray, k: float) -> float:
    """Min-K% (Shi et al. 2023): mean of the lowest k fraction of token log-probs (at least one)."""
    return _lowest_mean(np.asarray(token_logprobs, dtype=np.float64), k)


def min_k_plus_plus(token_logprobs: np.ndarray, mu: np.ndarray, sigma: np.ndarray, k: float) -> float:
    """Min-K%++: each token's log-prob standardised by the model's own next-token distribution,
    then Min-K% of those."""
    z = (np.asarray(token_logprobs, np.float64) - mu) / np.maximum(sigma, 1e-6)
    return _lowest_mean(z, k)


def text_scores(text: str, token_logprobs: np.ndarray, mu: np.ndarray | None, sigma: np.ndarray | None) -> dict:
    """All single-text scores. Min-K%++ is None when the backend cannot give mu/sigma."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    out = {"loss": loss(lp)}
    out["zlib_ratio"] = zlib_ratio(out["loss"], text)
    for k, name in zip(K_FRACTIONS, MIN_K_NAMES):
        out[name] = min_k(lp, k)
    for k, name in zip(K_FRACTIONS, MIN_K_PP_NAMES):
        out[name] = None if mu is None else min_k_plus_plus(lp, mu, sigma, k)
    return out


def projection_matrix(dim: int, out_dim: int, seed: int) -> np.ndarray:
    """Fixed seeded Gaussian random projection (Johnson-Lindenstrauss scaling)."""
    rng = np.random.default_rng([seed, dim, out_dim])
    return rng.standard_normal((dim, out_dim)) / math.sqrt(out_dim)


def neighbor_features(orig_loss: float, orig_emb: np.ndarray | None, nb_losses: np.ndarray, nb_embs,
                      projection: np.ndarray | None) -> dict:
    """Per neighbor: dL = loss(neighbor) - loss(original), cosine and L2 distance of the
    embeddings, and optionally the projected embedding difference (neighbor - original).
    Without embeddings (a backend with no hidden states and no embedder) those are None."""
    nb_losses = np.asarray(nb_losses, np.float64)
    out = {
        "nb_loss": nb_losses.tolist(),
        "nb_dL": (nb_losses - orig_loss).tolist(),
        "neighborhood": float(orig_loss - nb_losses.mean()) if len(nb_losses) else None,
        "nb_cos_dist": None, "nb_l2": None, "nb_de_proj": None,
    }
    if orig_emb is None:
        return out
    orig = np.asarray(orig_emb, np.float64)
    nb_embs = np.asarray(nb_embs, np.float64).reshape(len(nb_losses), len(orig))
    diff = nb_embs - orig
    norms = np.linalg.norm(nb_embs, axis=1) * np.linalg.norm(orig)
    out["nb_cos_dist"] = (1.0 - nb_embs @ orig / np.maximum(norms, 1e-12)).tolist()
    out["nb_l2"] = np.linalg.norm(diff, axis=1).tolist()
    if projection is not None:
        out["nb_de_proj"] = (diff @ projection).ravel().tolist()  # K x P, row-major
    return out


def sample_features(text: str, original, neighbors: list, projection: np.ndarray | None) -> dict:
    """Every per-sample feature from the TextScores of a text and of its neighbors (in neighbor
    order): the single-text scores, the neighbor features, token counts."""
    row = text_scores(text, original.token_logprobs, original.mu, original.sigma)
    row |= neighbor_features(row["loss"], original.embedding, [loss(x.token_logprobs) for x in neighbors],
                             [x.embedding for x in neighbors], projection)
    return row | {"n_tokens": original.n_tokens, "truncated": original.truncated,
                  "nb_tokens": sum(x.n_tokens for x in neighbors)}

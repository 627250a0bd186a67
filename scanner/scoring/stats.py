"""The per-text numbers every backend's results turn into: the registered scores
(scanner.scoring.registry; the attacks themselves live in scanner/scoring/scores/) and the
fidelity features of the neighbors, as pure numpy functions.

Inputs per text are the log-probs of its actual tokens (position t given tokens < t) and, for
Min-K%++, the mean and std of log p(z | prefix) under the model's own next-token distribution at
each position (mu_t = E_z~p[log p(z)], sigma_t^2 = E_z~p[(log p(z) - mu_t)^2]; Zhang et al. 2024).
"""

from __future__ import annotations

import math

import numpy as np

from scanner.scoring import registry

K_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)


def loss(token_logprobs: np.ndarray) -> float:
    """Mean negative log-likelihood per scored token."""
    return float(-np.mean(token_logprobs))


def lowest_mean(values: np.ndarray, k: float) -> float:
    """The mean of the lowest k fraction of the values (at least one)."""
    values = np.asarray(values, dtype=np.float64)
    n = max(1, int(math.floor(len(values) * k)))
    return float(np.mean(np.partition(values, n - 1)[:n]))


def text_scores(text: str, token_logprobs: np.ndarray, mu: np.ndarray | None, sigma: np.ndarray | None,
                top1_logprobs: np.ndarray | None = None) -> dict:
    """Every registered score that needs no neighbors (None where the backend gave no vocabulary
    statistics)."""
    inputs = registry.ScoreInputs(text, np.asarray(token_logprobs, dtype=np.float64), mu, sigma,
                                  top1_logprobs=top1_logprobs)
    return registry.compute(inputs, needs_only=("text", "token_logprobs", "vocab_stats", "top1_logprobs"))


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


def sample_features(text: str, original, neighbors: list, projection: np.ndarray | None,
                    which: list[str] | None = None, modules: list[str] | tuple[str, ...] = (),
                    reference: tuple | None = None, inputs: dict | None = None) -> dict:
    """Every per-sample feature from the TextScores of a text and of its neighbors (in neighbor
    order) and, with a reference model, (its TextScore under that model, whether both cut the text
    into the same tokens), and `inputs`, more of its ScoreInputs by name (the log-probs after each
    prefix, the token frequencies): the registered scores, with those of the score `modules` (`which`: only
    these, the others None), the neighbor features, token counts."""
    nb_losses = np.array([loss(x.token_logprobs) for x in neighbors], dtype=np.float64)
    ref, same_tokens = reference or (None, False)
    ref_logprobs = None if ref is None else np.asarray(ref.token_logprobs, dtype=np.float64)
    inputs = registry.ScoreInputs(text, np.asarray(original.token_logprobs, dtype=np.float64), original.mu,
                                  original.sigma, nb_losses, original.top1_logprobs,
                                  ref_loss=None if ref is None else loss(ref_logprobs),
                                  ref_token_logprobs=ref_logprobs if same_tokens else None, **(inputs or {}))
    row = registry.compute(inputs, which, modules=modules)
    row |= neighbor_features(loss(inputs.token_logprobs), original.embedding, nb_losses, [x.embedding for x in neighbors],
                             projection)
    return row | {"n_tokens": original.n_tokens, "truncated": original.truncated,
                  "nb_tokens": sum(x.n_tokens for x in neighbors)}

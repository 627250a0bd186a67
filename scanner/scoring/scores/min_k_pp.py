"""Min-K%++ (Zhang et al. 2024): each token's log-prob standardised by the model's own next-token
distribution at its position, (log p(x_t) - mu_t) / sigma_t, then Min-K% of those; members' is
higher. Registered at five k; needs the vocabulary statistics (mu, sigma)."""

import numpy as np

from scanner.scoring.registry import Score, register
from scanner.scoring.stats import K_FRACTIONS, lowest_mean


def standardised(x) -> np.ndarray:
    return (x.token_logprobs - x.mu) / np.maximum(x.sigma, 1e-6)


for _k in K_FRACTIONS:
    register(Score(f"min_k_pp_{round(_k * 100)}", higher_is_member=True, needs=("token_logprobs", "vocab_stats"),
                   compute=lambda x, k=_k: lowest_mean(standardised(x), k), family="Min-K%++",
                   summary=f"Min-K% ({_k:.0%}) of log-probs standardised by the model's next-token distribution"))

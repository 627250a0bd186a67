"""Gap-K% (arXiv 2601.19936, ACL 2026): how far each token's log-prob falls below the model's
top-1 prediction at its position, log p(x_t) - max_z log p(z), standardised by the position's
sigma (the std of log p under the model, as in Min-K%++), smoothed by a moving average over
WINDOW adjacent tokens, then the mean of the lowest K%; members' is higher (nearer 0). Training
penalises exactly this gap, so memorised text keeps it small.

Read from the authors' code (github.com/meaoww/gap-k, wikimia.py): the window is 3 ("valid"
positions only; a text shorter than the window is not smoothed), sigma is floored at 1e-4 (their
variance at 1e-8), and K% of the smoothed values, at least one, are averaged. Registered at the
five k of Min-K%; needs the vocabulary statistics and the top-1 log-probs of the same pass."""

import numpy as np

from scanner.scoring.registry import Score, register
from scanner.scoring.stats import K_FRACTIONS, lowest_mean

WINDOW = 3


def smoothed_gaps(x) -> np.ndarray:
    gap = (x.token_logprobs - x.top1_logprobs) / np.maximum(x.sigma, 1e-4)
    if len(gap) < WINDOW:
        return gap
    return np.convolve(gap, np.ones(WINDOW) / WINDOW, mode="valid")


for _k in K_FRACTIONS:
    register(Score(f"gap_k_{round(_k * 100)}", higher_is_member=True,
                   needs=("token_logprobs", "vocab_stats", "top1_logprobs"),
                   compute=lambda x, k=_k: lowest_mean(smoothed_gaps(x), k), family="Gap-K%",
                   summary=f"Gap-K% ({_k:.0%}): the lowest log-prob gaps to the top-1 token, standardised and "
                           f"smoothed over {WINDOW} tokens"))

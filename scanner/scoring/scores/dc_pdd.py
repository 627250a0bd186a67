"""DC-PDD (Zhang et al. 2024, arXiv 2409.14781): the model's probability of each token against how
common the token is in a reference corpus. Per token at its first occurrence in the text,
alpha = p(x_t) x log(1 / f(x_t)), with f the token's frequency in the reference corpus
((count + 1) / (tokens + vocabulary), Laplace-smoothed) and alpha capped at A; the score is the
mean. A member's rare tokens get probabilities their rarity does not explain: higher is member.

As the paper defines it and its authors' code computes it (github.com/zhang-wei-chao/DC-PDD,
com_det_sco.py: first occurrences, the cap a = 0.01; they orient -score for non-members).
Interpreted: their evaluation code indexes the raw counts where the smoothed frequencies are
meant (fast-mia copies that, with log(1/count)); the smoothed ones are used here. Needs the
scan's `token_frequencies` (a `scanner frequencies` folder counted with the model's tokenizer)."""

import numpy as np

from scanner.scoring.registry import Score, register

A = 0.01


def dc_pdd(x) -> float:
    if len(x.token_ids) == 0:
        return 0.0
    _, first = np.unique(x.token_ids, return_index=True)
    alpha = np.exp(x.token_logprobs[first]) * np.log(1 / x.token_frequencies[first])
    return float(np.mean(np.minimum(alpha, A)))


register(Score("dc_pdd", higher_is_member=True, needs=("token_logprobs", "token_frequencies"), compute=dc_pdd,
               summary=f"DC-PDD: mean of p(token) x log(1 / its corpus frequency) at first occurrences, capped at {A}"))

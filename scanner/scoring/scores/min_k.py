"""Min-K% (Shi et al. 2023): the mean of the lowest k fraction of the tokens' log-probs (at least
one token); members' is higher. Registered at five k."""

from scanner.scoring.registry import Score, register
from scanner.scoring.stats import K_FRACTIONS, lowest_mean

for _k in K_FRACTIONS:
    register(Score(f"min_k_{round(_k * 100)}", higher_is_member=True, needs=("token_logprobs",),
                   compute=lambda x, k=_k: lowest_mean(x.token_logprobs, k), family="Min-K%",
                   summary=f"mean of the lowest {_k:.0%} of token log-probs"))

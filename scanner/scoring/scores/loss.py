"""LOSS (Yeom et al. 2018): the mean negative log-likelihood per scored token; members' is lower."""

from scanner.scoring.registry import Score, register
from scanner.scoring.stats import loss

register(Score("loss", higher_is_member=False, needs=("token_logprobs",), compute=lambda x: loss(x.token_logprobs),
               summary="mean negative log-likelihood per token"))

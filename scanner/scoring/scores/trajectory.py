"""Loss-trajectory features, in the spirit of CAMIA (Chang et al. 2025, arXiv 2409.13745): how a
text's per-token loss evolves along it, not only its mean. A memorised text gets easier as its
own context accumulates (the loss falls along it) and has more tokens the model is nearly sure
of. Our definitions, as the issue lists them (the paper's exact signal set was not at hand):

- loss_slope: the least-squares slope of the per-token loss against the token's relative
  position (0 at the first scored token, 1 at the last): nats over the whole text; lower is
  member. A text of one token has slope 0.
- loss_first_{25,50}: the mean loss of the first 25% / 50% of the tokens (at least one), the
  cut-off losses: lower is member.
- below_{1,3}: the share of tokens whose loss is below 1 / 3 nats (probability above e^-1 /
  e^-3): higher is member.

They are detector inputs first: alone each is weaker than LOSS on the tests' tiny GPT-2."""

import math

import numpy as np

from scanner.scoring.registry import Score, register
from scanner.scoring.stats import loss

CUTOFFS = (0.25, 0.5)
THRESHOLDS = (1, 3)


def loss_slope(logprobs: np.ndarray) -> float:
    n = len(logprobs)
    if n < 2:
        return 0.0
    x = np.arange(n) / (n - 1)
    return float(np.polyfit(x, -logprobs, 1)[0])


def first_loss(logprobs: np.ndarray, share: float) -> float:
    return loss(logprobs[: max(1, math.ceil(len(logprobs) * share))])


register(Score("loss_slope", higher_is_member=False, needs=("token_logprobs",), compute=lambda x: loss_slope(x.token_logprobs),
               summary="slope of the per-token loss along the text (nats from first to last token)"))
for _c in CUTOFFS:
    register(Score(f"loss_first_{round(_c * 100)}", higher_is_member=False, needs=("token_logprobs",),
                   compute=lambda x, c=_c: first_loss(x.token_logprobs, c), family="cut-off loss",
                   summary=f"mean loss of the first {_c:.0%} of the tokens"))
for _t in THRESHOLDS:
    register(Score(f"below_{_t}", higher_is_member=True, needs=("token_logprobs",),
                   compute=lambda x, t=_t: float(np.mean(-x.token_logprobs < t)), family="count below",
                   summary=f"share of tokens with loss below {_t} nat{'s' if _t > 1 else ''}"))

"""Loss-trajectory features after CAMIA (Chang et al., EMNLP 2025, arXiv 2409.13745): how a
text's per-token loss evolves along it, not only its mean. A memorised text gets easier as its
own context accumulates and has more tokens the model is nearly sure of. Detector inputs first:
alone each is weaker than LOSS on the tests' tiny GPT-2.

Ours, from the issue's list:

- loss_slope: the least-squares slope of the per-token loss against the token's relative
  position (0 at the first scored token, 1 at the last): nats over the whole text; lower is
  member. A text of one token has slope 0.
- loss_first_{25,50}: the mean loss of the first 25% / 50% of the tokens (at least one), the
  cut-off losses: lower is member.
- below_{1,3}: the share of tokens whose loss is below 1 / 3 nats (probability above e^-1 /
  e^-3): higher is member. CAMIA's count_above is the same share over the first 200 tokens, with
  "at most" for "below".

CAMIA's own, as its authors' code (github.com/changhongyan123/context_aware_mia,
util_features.py and run_ours_train_lr.py) computes them on the text's token log-probs:

- above_prev_mean: the share of tokens (from the second) whose log-prob is above the mean of
  the log-probs before it (their count_above_pre, whole text): higher is member.
- lz_{3,4,5}: the Lempel-Ziv complexity of the first 200 log-probs: each put on a 100-level
  scale from the text's lowest log-prob to 0, the levels cut into 3 / 4 / 5 equal bins, then
  the number of distinct phrases of a left-to-right parse over the length. A memorised text's
  log-probs stay near 0, so it needs fewer phrases: lower is member.

Not taken (they need more than one pass, or more than log-probs): the signals over the text
repeated six times (their slope and approximate entropy over the copies, and each signal's
difference between copies), the calibrated loss (loss over the share of distinct token ids), and
the count of tokens above the mean (a count, so mostly the text's length). Their directions come
from the data in their code (each flipped to the members' side per dataset); ours are fixed."""

import math

import numpy as np

from scanner.scoring.registry import Score, register
from scanner.scoring.stats import loss

CUTOFFS = (0.25, 0.5)
THRESHOLDS = (1, 3)
LZ_BINS = (3, 4, 5)
LZ_WINDOW = 200  # tokens, CAMIA's
LZ_LEVELS = 100


def loss_slope(logprobs: np.ndarray) -> float:
    n = len(logprobs)
    if n < 2:
        return 0.0
    x = np.arange(n) / (n - 1)
    return float(np.polyfit(x, -logprobs, 1)[0])


def above_prev_mean(logprobs: np.ndarray) -> float:
    """The share of positions t >= 1 with logprobs[t] above the mean of logprobs[:t] (0 for a
    text of one token)."""
    if len(logprobs) < 2:
        return 0.0
    before = np.cumsum(logprobs)[:-1] / np.arange(1, len(logprobs))
    return float(np.mean(logprobs[1:] > before))


def lz_complexity(logprobs: np.ndarray, bins: int) -> float:
    """Distinct phrases of a left-to-right parse of the binned log-probs, over their number (an
    unfinished last phrase, already seen, is not counted)."""
    x = np.asarray(logprobs[:LZ_WINDOW], dtype=np.float64)
    if len(x) == 0:
        return 0.0
    levels = np.digitize(x, np.linspace(x.min(), 0.0, LZ_LEVELS), right=True)
    symbols = np.searchsorted(np.linspace(levels.min(), levels.max(), bins + 1)[1:], levels, side="left").tolist()
    phrases: set[tuple] = set()
    start, width = 0, 1
    while start + width <= len(symbols):
        phrase = tuple(symbols[start:start + width])
        if phrase in phrases:
            width += 1
        else:
            phrases.add(phrase)
            start, width = start + width, 1
    return len(phrases) / len(symbols)


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
register(Score("above_prev_mean", higher_is_member=True, needs=("token_logprobs",),
               compute=lambda x: above_prev_mean(x.token_logprobs),
               summary="share of tokens whose log-prob is above the mean of those before it (CAMIA)"))
for _b in LZ_BINS:
    register(Score(f"lz_{_b}", higher_is_member=False, needs=("token_logprobs",),
                   compute=lambda x, b=_b: lz_complexity(x.token_logprobs, b), family="LZ complexity",
                   summary=f"Lempel-Ziv complexity of the first {LZ_WINDOW} log-probs in {_b} bins (CAMIA)"))

"""Reference-model scores (Carlini et al. 2021; MIMIR's "ref"): the target's loss against the
loss of a reference model that did not see the data (the base a model was fine-tuned from, or a
smaller model of the same family), which cancels how easy the text is. Both are lower for
members. They need the scan's `reference_model`; the two models may tokenize differently (each
loss is its own model's mean per token)."""

from scanner.scoring.registry import Score, register
from scanner.scoring.stats import loss

RATIO_FLOOR = 1e-8  # a reference loss of 0 (a text it predicts exactly) would divide by zero

register(
    Score("ref_loss_diff", higher_is_member=False, needs=("token_logprobs", "ref_loss"),
          compute=lambda x: loss(x.token_logprobs) - x.ref_loss, family="reference",
          summary="target loss minus the reference model's loss"),
    Score("ref_loss_ratio", higher_is_member=False, needs=("token_logprobs", "ref_loss"),
          compute=lambda x: loss(x.token_logprobs) / max(x.ref_loss, RATIO_FLOOR), family="reference",
          summary="target loss over the reference model's loss"),
)

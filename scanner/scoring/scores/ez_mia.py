"""EZ-MIA (Ilic et al. 2026, arXiv 2601.12104): the Error Zone score. At the positions where the
target model's top-1 prediction is not the actual token, fine-tuning still raises the actual
token's log-prob above the reference model's for members; the score is the sum of those rises
over the sum of the falls, log p_target(x_t) - log p_ref(x_t) at error positions. Higher is
member.

As the authors' code computes it (github.com/JetBrains-Research/ez-mia, mia/ez_score.py): the
first scored position is left out (their `ignore_bos`), fewer than 2 error positions or no fall
at all give 0, and 1e-12 is added to the falls. An error position is one whose log-prob is more
than TIE below the top-1 log-prob: a tie counts as a correct prediction, and HF and vLLM, whose
log-probs differ by ~1e-5, find the same positions. Needs the reference model's log-probs of the
same token ids (the same tokenizer)."""

from scanner.scoring.registry import Score, register

TIE = 1e-4
MIN_ERRORS = 2


def error_zone(x) -> float:
    lp, ref, top1 = x.token_logprobs[1:], x.ref_token_logprobs[1:], x.top1_logprobs[1:]
    errors = lp < top1 - TIE
    if errors.sum() < MIN_ERRORS:
        return 0.0
    shift = (lp - ref)[errors]
    rises, falls = float(shift[shift > 0].sum()), float(-shift[shift < 0].sum())
    return rises / (falls + 1e-12) if falls > 0 else 0.0


register(Score("ez_mia", higher_is_member=True, needs=("token_logprobs", "top1_logprobs", "ref_token_logprobs"),
               compute=error_zone,
               summary="EZ-MIA: rises over falls of the log-prob against the reference model, where the target's top-1 is wrong"))

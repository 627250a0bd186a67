"""WBC, window-based comparison (Chen et al. 2026, arXiv 2601.02751, USENIX Security 2026): every
window of w adjacent tokens votes member when the target model's summed loss over it is below
the reference model's; the score is the share of such windows, averaged over geometrically spaced
window sizes. A vote ignores how much lower, so a few tokens with extreme losses (the heavy tails
of fine-tuning) cannot outweigh the rest. Higher is member.

As the authors' code computes it (github.com/Stry233/WBC, attacks/wbc.py, with the window sizes of
their example config): a text shorter than a window is one window of its length, an empty text 0.
Needs the reference model's log-probs of the same token ids (the same tokenizer)."""

import numpy as np

from scanner.scoring.registry import Score, register

WINDOWS = (2, 3, 4, 6, 9, 13, 18, 25, 32, 40)


def window_votes(target_logprobs: np.ndarray, ref_logprobs: np.ndarray, windows=WINDOWS) -> float:
    n = len(target_logprobs)
    if n == 0:
        return 0.0
    shares = []
    for w in windows:
        kernel = np.ones(min(w, n))
        # the reference's loss above the target's: its log-prob below
        shares.append(np.mean(np.convolve(target_logprobs, kernel, "valid") > np.convolve(ref_logprobs, kernel, "valid")))
    return float(np.mean(shares))


register(Score("wbc", higher_is_member=True, needs=("token_logprobs", "ref_token_logprobs"),
               compute=lambda x: window_votes(x.token_logprobs, x.ref_token_logprobs),
               summary=f"WBC: share of windows ({', '.join(map(str, WINDOWS))} tokens) where the target's loss is below "
                       "the reference model's"))

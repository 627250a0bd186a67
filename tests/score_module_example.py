"""A score module of a user's own (named in a scan config's `score_modules`): importing it
registers its score, in the driver and in every worker that scores."""

import numpy as np

from scanner.scoring.registry import Score, register

register(Score("max_token_loss", higher_is_member=False, needs=("token_logprobs",),
               compute=lambda x: float(-np.min(x.token_logprobs)), summary="the largest token loss (an example)"))

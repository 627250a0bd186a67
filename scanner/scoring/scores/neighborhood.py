"""Neighbourhood comparison (Mattern et al. 2023): the text's loss minus the mean loss of its
perturbed neighbors; members' is lower (more negative: their loss is a sharper minimum)."""

import numpy as np

from scanner.scoring.registry import Score, register
from scanner.scoring.stats import loss

register(Score("neighborhood", higher_is_member=False, needs=("token_logprobs", "neighbor_losses"),
               compute=lambda x: loss(x.token_logprobs) - float(np.mean(x.neighbor_losses)),
               summary="loss - mean loss of the text's neighbors"))

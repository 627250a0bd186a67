"""zlib ratio (Carlini et al. 2021): the loss over the text's zlib-compressed length, which
normalises away plain redundancy; members' is lower."""

import zlib

from scanner.scoring.registry import Score, register
from scanner.scoring.stats import loss


def zlib_entropy(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


register(Score("zlib_ratio", higher_is_member=False, needs=("text", "token_logprobs"),
               compute=lambda x: loss(x.token_logprobs) / zlib_entropy(x.text),
               summary="loss / zlib-compressed length in bytes"))

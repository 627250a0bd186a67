"""Prefix-conditioned scores. ReCaLL (Xie et al. 2024, arXiv 2406.15968): the text's loss with
texts the model did not see in front, over its loss alone; Con-ReCall (Wang et al. 2024, arXiv
2409.03363) subtracts GAMMA x its loss with texts the model saw in front. Both need the scan's
prefix files (`recall_prefix`, `conrecall_prefix`: scanner.prefixes), which must not be among
the scanned texts.

As fast-mia computes them (github.com/Nikkei/fast-mia, src/methods/recall.py and conrecall.py):
the prefix, then the text as it is scored alone (its BOS token first), the loss over the text's
tokens only, 1e-10 added to the denominator, gamma 0.5. Interpreted: the prefix file's texts
are joined by a blank line, a prefix longer than the window leaves room for the text by losing
its beginning (fast-mia drops whole shots), and the loss after the prefix counts the text's tokens
only, as the loss alone does (fast-mia's also counts the BOS token between prefix and text)."""

from scanner.scoring.registry import Score, register
from scanner.scoring.stats import loss

GAMMA = 0.5
EPS = 1e-10


def recall(x) -> float:
    return loss(x.prefix_logprobs) / (loss(x.token_logprobs) + EPS)


def con_recall(x) -> float:
    return (loss(x.prefix_logprobs) - GAMMA * loss(x.member_prefix_logprobs)) / (loss(x.token_logprobs) + EPS)


register(
    Score("recall", higher_is_member=True, needs=("token_logprobs", "prefix_logprobs"), compute=recall,
          summary="ReCaLL: loss after the non-member prefix over the loss alone"),
    Score("con_recall", higher_is_member=True, needs=("token_logprobs", "prefix_logprobs", "member_prefix_logprobs"),
          compute=con_recall, summary=f"Con-ReCall: (loss after the non-member prefix - {GAMMA} x loss after the "
                                      "member prefix) over the loss alone"),
)

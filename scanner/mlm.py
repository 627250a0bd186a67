"""Masked-LM substitution: fills the words that the "mlm" perturbation marked, with a fill-mask
model (e.g. a BERT/RoBERTa hub id or local path), all masks of a call in batched forwards.

A marked word reads MASK_OPEN + original + MASK_CLOSE. Each becomes one mask token; the filler
takes the model's most likely whole-word token that differs from the original (argmax: no
sampling, so the same model gives the same neighbors). A mark whose mask fell beyond the
model's window keeps its original word.
"""

from __future__ import annotations

import re

import torch

from scanner.neighbors import MASK_CLOSE, MASK_OPEN

_MARK = re.compile(re.escape(MASK_OPEN) + "(.*?)" + re.escape(MASK_CLOSE), re.S)


def has_marks(text: str) -> bool:
    return MASK_OPEN in text


class MaskFiller:
    def __init__(self, model: str, device: str | None = None, trust_remote_code: bool = False,
                 batch_size: int = 32, top_k: int = 20):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        if self.tok.mask_token is None:
            raise ValueError(f"{model} has no mask token: not a fill-mask model")
        self.model = AutoModelForMaskedLM.from_pretrained(model, trust_remote_code=trust_remote_code).to(self.device).eval()
        self.batch_size = batch_size
        self.top_k = top_k
        self.special = set(self.tok.all_special_ids)

    def _word(self, token_id: int) -> str:
        return self.tok.decode([token_id]).strip()

    @torch.no_grad()
    def fill(self, texts: list[str]) -> list[str]:
        """Fills every marked word of every text; texts without marks come back unchanged."""
        out = list(texts)
        todo = [i for i, t in enumerate(texts) if has_marks(t)]
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            originals = [_MARK.findall(texts[i]) for i in idx]
            masked = [_MARK.sub(self.tok.mask_token, texts[i]) for i in idx]
            enc = self.tok(masked, return_tensors="pt", padding=True, truncation=True).to(self.device)
            logits = self.model(**enc).logits
            for row, (i, words) in enumerate(zip(idx, originals)):
                positions = (enc["input_ids"][row] == self.tok.mask_token_id).nonzero().flatten().tolist()
                fills = list(words)  # masks cut off by truncation keep their word
                for m, pos in enumerate(positions[: len(words)]):
                    for cand in torch.topk(logits[row, pos], self.top_k).indices.tolist():
                        word = self._word(cand)
                        if cand not in self.special and word and word != words[m] and not word.startswith("##"):
                            fills[m] = word
                            break
                it = iter(fills)
                out[i] = _MARK.sub(lambda _: next(it), texts[i])
        return out

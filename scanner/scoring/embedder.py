"""Optional separate sentence embedder for the fidelity features (e.g. all-MiniLM-L6-v2 by hub id
or local path): mean of its last hidden state over the text's tokens, as sentence-transformers
does for such models. Without it, the target model's own mean-pooled hidden state is used."""

from __future__ import annotations

import numpy as np
import torch


class Embedder:
    def __init__(self, model: str, device: str | None = None, trust_remote_code: bool = False,
                 batch_size: int = 64, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.model = AutoModel.from_pretrained(model, trust_remote_code=trust_remote_code).to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths, less padding
        out = np.empty((len(texts), self.dim), dtype=np.float64)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                           max_length=self.max_length).to(self.device)
            hidden = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[idx] = ((hidden * m).sum(1) / m.sum(1)).float().cpu().numpy()
        return out

"""Vision-language backend: the loss of an image-text sample's text given its image.

- `AutoProcessor` + `AutoModelForImageTextToText` from a hub id or local path (LLaVA-style
  models, SmolVLM, Qwen2-VL ...); a peft adapter is merged once at load, as for text models.
- Each sample is fed as the processor's image placeholder followed by the text, the way
  image-caption pairs are seen in pretraining; the processor expands the placeholder into the
  image's tokens. Only the text's tokens are scored: each given the image and the text before
  it, the first one given the image alone. Token log-probs, the Min-K%++ statistics (the same
  LM-head pass as the text backend, scanner.scoring.vocab_stats) and the embedding (mean last
  hidden state over the text's tokens) come from one forward pass, so the feature rows are those
  of a text scan and every later step works unchanged. As in the text backend, the base model
  runs alone and the LM head over the text's positions only, on slices of the vocabulary, when
  that gives the model's own logits (checked at load); else one full forward pass.
- Texts are scored whole (the image's tokens must not be cut): `truncated` is always false.
"""

from __future__ import annotations

import torch

from scanner.errors import InputError
from scanner.images import decode_rgb, encode
from scanner.scoring.hf import device_and_dtype, load_model, split_head_matches
from scanner.scoring.interface import Capabilities, TextScore
from scanner.scoring.vocab_stats import logits_statistics, per_text, row_statistics

PAIRS_PER_BATCH = {"cpu": 8, "cuda": 32}


class VLMScorer:
    capabilities = Capabilities(vocab_stats=True, hidden_states=True)

    def __init__(self, model: str, revision: str | None = None, device: str | None = None,
                 dtype: str | None = None, trust_remote_code: bool = False, max_length: int | None = None,
                 adapter: str | None = None):
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device, self.dtype = device_and_dtype(device, dtype)
        self.processor = AutoProcessor.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
        self.image_token = getattr(self.processor, "image_token", None)
        if not self.image_token:
            raise InputError(f"{model}: its processor names no image token, so it cannot place an image before a text")
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "right"  # positions of the text's tokens stay where the processor put them
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.model = load_model(AutoModelForImageTextToText, model, self.device, self.dtype, revision,
                                trust_remote_code, adapter)
        self.model_id = model
        self.revision = revision or getattr(self.model.config, "_commit_hash", None) or "local"
        self.head = self.model.get_output_embeddings()
        self.text_config = self.model.config.get_text_config()
        self.base = getattr(self.model, self.model.base_model_prefix, None)
        check = self._inputs(["a check"], [encode(Image.new("RGB", (32, 32), (128, 96, 64)))])
        self.split_head = self.base is not None and split_head_matches(self.model, self.base, self.head, check)

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    def _inputs(self, texts: list[str], images: list[bytes]) -> dict:
        enc = self.processor(images=[decode_rgb(b) for b in images], text=[self.image_token + t for t in texts],
                             return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.no_grad()
    def _score_batch(self, texts: list[str], images: list[bytes]) -> list[TextScore]:
        enc = self._inputs(texts, images)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        positions = torch.arange(ids.shape[1], device=ids.device)
        # a row's text starts after its last image token and ends at its last real token
        starts = torch.where(ids == self.image_token_id, positions, -1).max(dim=1).values + 1
        ends = torch.where(mask.bool(), positions, -1).max(dim=1).values + 1
        # position t - 1 predicts the text's token t: the positions scored, row by row
        scored = (positions[None, :-1] >= starts[:, None] - 1) & (positions[None, :-1] < ends[:, None] - 1)
        targets = ids[:, 1:][scored]
        if self.split_head:
            hidden = self.base(**enc).last_hidden_state
            stats = row_statistics(hidden[:, :-1][scored], targets, self.head)
        else:
            first = int(starts.min()) - 1  # the LM head only over the text's positions (the image's come first)
            T = ids.shape[1]
            try:
                out = self.model(**enc, output_hidden_states=True, logits_to_keep=T - first)
                kept = first
            except TypeError:  # a model without logits_to_keep: all positions
                out = self.model(**enc, output_hidden_states=True)
                kept = 0
            hidden = out.hidden_states[-1]
            stats = logits_statistics(out.logits[:, :T - 1 - kept][scored[:, kept:]], targets)
        sizes = (ends - starts).tolist()
        scores = []
        for i, parts in enumerate(per_text(stats, sizes)):
            s, e = int(starts[i]), int(ends[i])
            scores.append(TextScore(*parts, hidden[i, s:e].float().mean(0).cpu().numpy(), e - s + 1, False))
        return scores

    def score_pairs(self, texts: list[str], images: list[bytes], pairs_per_batch: int | None = None) -> list[TextScore]:
        """One TextScore per (text, encoded image), in order; batches of similar text length."""
        size = pairs_per_batch or PAIRS_PER_BATCH["cuda" if self.device.startswith("cuda") else "cpu"]
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        results: list = [None] * len(texts)
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            for i, score in zip(chunk, self._score_batch([texts[i] for i in chunk], [images[i] for i in chunk])):
                results[i] = score
        return results

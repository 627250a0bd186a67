"""A known-membership setup that needs no download: English passages from CPython's own docs,
and a tiny GPT-2 (BPE tokenizer + model) trained on half of them, so members are really
memorised. Used by the tests, the benchmark and the demo."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch


def english_passages(min_words: int = 40, max_words: int = 150) -> list[str]:
    """Distinct prose paragraphs of the pydoc topics that ship with CPython (~440)."""
    from pydoc_data.topics import topics

    seen, out = set(), []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            words = para.split()
            text = " ".join(words)
            if min_words <= len(words) <= max_words and sum(c.isalpha() for c in text) / len(text) > 0.7 and text not in seen:
                seen.add(text)
                out.append(text)
    return out


def member_split(passages: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Half members, half non-members, by a seeded shuffle."""
    order = np.random.default_rng(seed).permutation(len(passages))
    half = len(passages) // 2
    return [passages[i] for i in order[:half]], [passages[i] for i in order[half:]]


def bpe_tokenizer(texts: list[str], vocab: int):
    """A byte-level BPE tokenizer trained on `texts`, with <|endoftext|> as BOS/EOS (GPT-2 style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def train_tiny_gpt2(members: list[str], all_texts: list[str], out_dir: Path, target_loss: float = 3.9,
                    max_epochs: int = 60, seed: int = 0, layers: int = 2, width: int = 128,
                    vocab: int = 2048, log=print) -> dict:
    """Train a BPE tokenizer on `all_texts` and a GPT-2 on `members` until the mean training loss
    of an epoch reaches `target_loss` (AUC depends on how far memorisation went, not on the
    epoch count). Saves a standard HF checkpoint in out_dir, loadable by from_pretrained."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from scanner.scoring.hf import right_padded

    torch.manual_seed(seed)
    hf_tok = bpe_tokenizer(all_texts, vocab)
    config = GPT2Config(vocab_size=len(hf_tok), n_positions=256, n_embd=width, n_layer=layers, n_head=4,
                        bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)
    model = GPT2LMHeadModel(config)
    bos = hf_tok.bos_token_id
    seqs = [[bos] + hf_tok(t)["input_ids"][:255] for t in members]

    def loss_of(rows):
        ids, mask = right_padded([seqs[i] for i in rows], bos)
        return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss

    info = train_to_loss(model, len(seqs), loss_of, target_loss, max_epochs, seed, lambda e, x: log(
        f"tiny GPT-2 epoch {e}: training loss {x:.3f}"))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    hf_tok.save_pretrained(out_dir)
    return info


def train_to_loss(model, n: int, loss_of, target_loss: float, max_epochs: int, seed: int, log) -> dict:
    """AdamW (lr 3e-3) over n examples in seeded batches of 16 (`loss_of(rows)` gives a batch's
    loss) until an epoch's mean loss reaches target_loss or max_epochs have run."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    t0, epoch_loss = time.perf_counter(), float("inf")
    model.train()
    for epoch in range(1, max_epochs + 1):
        losses = []
        order = rng.permutation(n)
        for start in range(0, n, 16):
            loss = loss_of(order[start:start + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        epoch_loss = float(np.mean(losses))
        log(epoch, epoch_loss)
        if epoch_loss <= target_loss:
            break
    model.eval()
    return {"epochs": epoch, "train_loss": epoch_loss, "seconds": round(time.perf_counter() - t0, 1)}

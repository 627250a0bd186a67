"""Masked-LM neighbors and the separate sentence embedder, with tiny random BERTs saved to disk."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from scanner.config import ScanConfig
from scanner.errors import InputError
from scanner.features import ScoreActor, perturb_batch
from scanner.mlm import MaskFiller
from scanner.neighbors import MASK_OPEN, NeighborConfig, perturb, rng_for
from scanner.scoring.embedder import Embedder
from scanner.toy import english_passages

TEXT = "The interpreter reads each line of the file and executes the statements in order."


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("bert")
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(english_passages(), vocab_size=800)
    tok = PreTrainedTokenizerFast(tokenizer_object=wp._tokenizer, model_max_length=32, unk_token="[UNK]",
                                  sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return str(root)


def test_mask_filler_replaces_marked_words_deterministically(tiny_bert):
    cfg = NeighborConfig(min_changes=3, max_changes=3)
    marked = [perturb(TEXT, "mlm", rng_for(0, "s", i), cfg) for i in range(4)]
    assert all(m.count(MASK_OPEN) == 3 for m in marked)
    filler = MaskFiller(tiny_bert)
    filled = filler.fill(marked + [TEXT])
    assert filled == filler.fill(marked + [TEXT])  # argmax: same model, same neighbors
    assert filled[-1] == TEXT  # unmarked text untouched
    for m, f in zip(marked, filled[:4]):
        assert MASK_OPEN not in f and "\x00" not in f
        old, new = TEXT.split(), f.split()
        assert len(new) == len(old)
        changed = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
        assert 1 <= len(changed) <= 3  # only marked words change (a fill may equal a neighbour word)


def test_marks_beyond_the_fill_model_window_keep_their_words(tiny_bert):
    long_text = " ".join(["word"] * 60) + " final"
    marked = long_text.replace(" final", f" {MASK_OPEN}final]\x00")
    assert MaskFiller(tiny_bert).fill([marked])[0] == long_text  # model_max_length is 32 tokens


def test_embedder_mean_pools_real_tokens_only(tiny_bert):
    emb = Embedder(tiny_bert)
    out = emb.embed(["short", TEXT, "short"])
    assert out.shape == (3, 32)
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)  # padding in the batch does not leak
    alone = emb.embed([TEXT])[0]
    np.testing.assert_allclose(out[1], alone, atol=1e-5)


def test_score_actor_fills_mlm_neighbors_and_uses_the_embedder(tiny_bert, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from scanner.toy import bpe_tokenizer

    hf_tok = bpe_tokenizer([TEXT] * 3, 300)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(hf_tok), n_positions=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    hf_tok.save_pretrained(tmp_path)
    cfg = ScanConfig(model=str(tmp_path), neighbors=4, neighbor_kinds=["mlm", "delete"], mlm_model=tiny_bert,
                     embedder=tiny_bert, proj_dim=4).validate()
    batch = pa.table({"sample_id": ["a", "b"], "text": [TEXT, TEXT.upper()], "label": pa.array([1, 0], pa.int8()),
                      "source": ["s", "s"], "file": ["f", "f"], "row": [1, 2], "shard": ["f-00000"] * 2})
    out = ScoreActor(cfg.__dict__).score_batch(perturb_batch(batch, cfg.neighbor_config()))
    assert out.num_rows == 2 and out["nb_kinds"][0].as_py() == ["mlm", "delete", "mlm", "delete"]
    assert len(out["nb_de_proj"][0].as_py()) == 4 * 4
    assert all(d > 0 for d in out["nb_l2"][0].as_py())  # neighbors really differ from the original

    with pytest.raises(InputError, match="fill-mask model"):
        ScanConfig(model="m", neighbor_kinds=["mlm"]).validate()

"""Ray Data stages that turn samples into feature rows: perturbation (CPU tasks) and scoring (an
actor that keeps the model loaded). A sample's original and neighbors travel in one row and are
scored in the same call, so every per-sample feature is computed here and no later stage has to
join on sample_id.

Feature row schema (one per sample; lists have one entry per neighbor, in neighbor order):
  sample_id, label (1 member / 0 non-member / null), source, shard,
  n_tokens (original, incl. the prefix token), truncated,
  loss, zlib_ratio, min_k_{5,10,20,30,50}, min_k_pp_{5,10,20,30,50}, neighborhood,
  nb_kinds, nb_loss, nb_dL, nb_cos_dist, nb_l2, nb_de_proj (K x proj_dim, row-major; null if proj_dim = 0),
  nb_tokens (tokens scored over all neighbors), model, revision, run_id (added when written).
Other input columns (but the texts) pass through; `scored_on` (the actor's node id) is appended
for the driver's bookkeeping and dropped before anything is written.
min_k_pp_* are null with the vllm backend; the embedding columns are null without embeddings.
"""

from __future__ import annotations

import pyarrow as pa

from scanner.neighbors import make_neighbors
from scanner.scoring import stats

FEATURE_SCHEMA = pa.schema(
    [("sample_id", pa.string()), ("label", pa.int8()), ("source", pa.string()), ("shard", pa.string()),
     ("n_tokens", pa.int32()), ("truncated", pa.bool_()), ("loss", pa.float64()), ("zlib_ratio", pa.float64())]
    + [(name, pa.float64()) for name in stats.MIN_K_NAMES + stats.MIN_K_PP_NAMES]
    + [("neighborhood", pa.float64()), ("nb_kinds", pa.list_(pa.string())), ("nb_loss", pa.list_(pa.float64())),
       ("nb_dL", pa.list_(pa.float64())), ("nb_cos_dist", pa.list_(pa.float64())), ("nb_l2", pa.list_(pa.float64())),
       ("nb_de_proj", pa.list_(pa.float32())), ("nb_tokens", pa.int64())]
)


def perturb_batch(batch: pa.Table, neighbor_cfg) -> pa.Table:
    """Adds the K neighbor texts and their kinds to each sample."""
    texts, kinds = [], []
    for sid, text in zip(batch["sample_id"].to_pylist(), batch["text"].to_pylist()):
        t, k = make_neighbors(text, sid, neighbor_cfg)
        texts.append(t)
        kinds.append(k)
    return batch.append_column("nb_texts", pa.array(texts, pa.list_(pa.string()))).append_column(
        "nb_kinds", pa.array(kinds, pa.list_(pa.string())))


def make_scorer(cfg):
    """The configured backend; both return TextScores for the same token ids."""
    common = dict(revision=cfg.revision, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                  max_length=cfg.max_length)
    if cfg.backend == "vllm":
        from scanner.scoring.vllm import VLLMScorer

        return VLLMScorer(cfg.model, engine=cfg.engine_options(), **common)
    from scanner.scoring.hf import HFScorer

    return HFScorer(cfg.model, device=cfg.device, **common)


class ScoreActor:
    """Holds one scorer, plus the fill-mask model when "mlm" neighbors are asked for and the
    sentence embedder when one is configured; each call fills, scores and embeds the originals
    and neighbors of a batch of samples."""

    def __init__(self, cfg: dict):
        import ray

        from scanner.config import ScanConfig

        self.cfg = ScanConfig(**cfg)
        # (asking outside Ray would start a local Ray instance)
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
        self.scorer = make_scorer(self.cfg)
        self.filler = None
        if self.cfg.mlm_model:  # masked-LM neighbors are filled here, where the accelerator is
            from scanner.mlm import MaskFiller

            self.filler = MaskFiller(self.cfg.mlm_model, device=self.cfg.device,
                                     trust_remote_code=self.cfg.trust_remote_code)
        self.embedder = None
        if self.cfg.embedder:
            from scanner.scoring.embedder import Embedder

            self.embedder = Embedder(self.cfg.embedder, device=self.cfg.device, trust_remote_code=self.cfg.trust_remote_code)
        emb_dim = self.embedder.dim if self.embedder else getattr(self.scorer, "hidden_size", None)
        self.projection = (stats.projection_matrix(emb_dim, self.cfg.proj_dim, self.cfg.seed)
                           if self.cfg.proj_dim > 0 and emb_dim else None)

    def __call__(self, batch: pa.Table) -> pa.Table:
        originals = batch["text"].to_pylist()
        neighbors = batch["nb_texts"].to_pylist()
        if self.filler is not None:
            filled = iter(self.filler.fill([t for nbs in neighbors for t in nbs]))
            neighbors = [[next(filled) for _ in nbs] for nbs in neighbors]
        flat = originals + [t for nbs in neighbors for t in nbs]
        scores = self.scorer.score_texts(flat, batch_tokens=self.cfg.batch_tokens)
        if self.embedder is not None:
            for score, emb in zip(scores, self.embedder.embed(flat)):
                score.embedding = emb
        rows, offset = [], len(originals)
        for i, text in enumerate(originals):
            s = scores[i]
            nb = scores[offset: offset + len(neighbors[i])]
            offset += len(neighbors[i])
            row = stats.text_scores(text, s.token_logprobs, s.mu, s.sigma)
            row |= stats.neighbor_features(row["loss"], s.embedding, [stats.loss(x.token_logprobs) for x in nb],
                                           [x.embedding for x in nb], self.projection)
            row |= {"n_tokens": s.n_tokens, "truncated": s.truncated, "nb_tokens": sum(x.n_tokens for x in nb)}
            rows.append(row)
        cols = {name: batch[name] for name in ("sample_id", "label", "source", "shard", "nb_kinds")}
        for field in FEATURE_SCHEMA:
            if field.name not in cols:
                values = [r.get(field.name) for r in rows]
                cols[field.name] = pa.array(values, field.type)
        table = pa.table({f.name: cols[f.name] for f in FEATURE_SCHEMA}).cast(FEATURE_SCHEMA)
        for name in batch.column_names:
            if name not in table.column_names and name not in ("text", "nb_texts"):
                table = table.append_column(name, batch[name])
        return table.append_column("scored_on", pa.array([self.node_id] * table.num_rows, pa.string()))

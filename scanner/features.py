"""Samples -> feature rows: perturbation (in the read task, on CPU) and the scoring actor, which
keeps the model loaded, scores a whole shard (each sample with its neighbors in the same call),
applies a detector when the run has one, and writes the shard's features and completion record
itself: the driver gets only that record.

Feature row schema (one per sample; lists have one entry per neighbor, in neighbor order):
  sample_id, label (1 member / 0 non-member / null), source, file, row (where it was read), shard,
  n_tokens (original, incl. the prefix token), truncated,
  the registered scores (scanner.scoring.registry; built in: loss, zlib_ratio, min_k_{5,10,20,30,50},
  min_k_pp_{5,10,20,30,50}, neighborhood, gap_k_{5,10,20,30,50}, loss_slope, loss_first_{25,50},
  below_{1,3}; with a reference model also ez_mia,
  ref_loss_diff, ref_loss_ratio, wbc; with prefix files recall, con_recall; with a frequency table
  dc_pdd), null where not computed,
  nb_kinds, nb_loss, nb_dL, nb_cos_dist, nb_l2, nb_de_proj (K x proj_dim, row-major; null if proj_dim = 0),
  nb_tokens (tokens scored over all neighbors),
  then text (when the run keeps texts: scans do, for the blind baseline; sweeps do not) and of
  image-text samples their image bytes (likewise),
  model, revision, run_id, and with a detector: detector, member_prob, flagged.
min_k_pp_* are null for a scorer without vocabulary statistics, the embedding columns for one
without embeddings (the hf, vllm and vlm backends give both).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scanner import faults
from scanner.errors import InputError
from scanner.neighbors import make_neighbors, make_pair_neighbors
from scanner.scoring import registry, stats
from scanner.scoring.interface import with_prefix

def feature_schema(score_modules: list[str] | tuple[str, ...] = (), settings: set[str] | frozenset[str] = frozenset()
                   ) -> pa.Schema:
    """The feature rows' columns: the registered scores a run computes (with its own score modules,
    and those its optional `settings` give: registry.SETTING_OF_NEED) between the sample's columns
    and the neighbor features."""
    return pa.schema(
        [("sample_id", pa.string()), ("label", pa.int8()), ("source", pa.string()), ("file", pa.string()),
         ("row", pa.int64()), ("shard", pa.string()), ("n_tokens", pa.int32()), ("truncated", pa.bool_())]
        + [(s.name, pa.float64()) for s in registry.scores(score_modules, settings)]
        + [("nb_kinds", pa.list_(pa.string())), ("nb_loss", pa.list_(pa.float64())),
           ("nb_dL", pa.list_(pa.float64())), ("nb_cos_dist", pa.list_(pa.float64())), ("nb_l2", pa.list_(pa.float64())),
           ("nb_de_proj", pa.list_(pa.float32())), ("nb_tokens", pa.int64())]
    )


PASSED_THROUGH = ("sample_id", "label", "source", "file", "row", "shard", "nb_kinds")  # from the samples, as they are


def perturb_batch(batch: pa.Table, neighbor_cfg) -> pa.Table:
    """Adds the K neighbor texts and their kinds to each sample, and of image-text samples
    (an `image` column) the K neighbor images."""
    ids, texts = batch["sample_id"].to_pylist(), batch["text"].to_pylist()
    if "image" in batch.column_names:
        made = [make_pair_neighbors(t, im, sid, neighbor_cfg) for sid, t, im in zip(ids, texts, batch["image"].to_pylist())]
        nb_texts, nb_kinds = [m[0] for m in made], [m[2] for m in made]
        batch = batch.append_column("nb_images", pa.array([m[1] for m in made], pa.list_(pa.large_binary())))
    else:
        made = [make_neighbors(t, sid, neighbor_cfg) for sid, t in zip(ids, texts)]
        nb_texts, nb_kinds = [m[0] for m in made], [m[1] for m in made]
    return batch.append_column("nb_texts", pa.array(nb_texts, pa.list_(pa.string()))).append_column(
        "nb_kinds", pa.array(nb_kinds, pa.list_(pa.string())))


def _first_line(e: BaseException) -> str:
    """An error in one line; our own InputErrors are written for users already (no type name)."""
    lines = str(e).strip().splitlines()
    first = lines[0] if lines else ""
    return first if isinstance(e, InputError) else f"{type(e).__name__}: {first}"


def binding(cfg: dict, folder: str | None = None, constants: dict | None = None, detector: dict | None = None,
            keep_text: bool = True, prefixes: dict | None = None) -> dict:
    """What a ScoreActor needs for one run besides its model: the run's settings, its folder, the
    columns every row carries, the detector of a sweep, whether rows keep their texts, the
    ReCaLL / Con-ReCall prefixes ({need: text}, scanner.prefixes)."""
    return {"cfg": cfg, "folder": folder, "constants": constants or {}, "detector": detector, "keep_text": keep_text,
            "prefixes": prefixes or {}}


class ScoreActor:
    """Holds one scorer, and per run (bind): the reference model's scorer when the run has one,
    the fill-mask model when "mlm" neighbors are asked for, the sentence embedder when one is
    configured, and the detector of a sweep. The model stays loaded between runs: the engine binds
    a parked actor to the next run of the same model."""

    def __init__(self, cfg: dict, run: dict | None = None):
        """cfg: the settings the model is loaded with (scoring.factory.scorer_key); run: a
        binding() (default: cfg's own, no folder)."""
        import ray

        from scanner.config import ScanConfig
        from scanner.scoring.factory import make_scorer

        self.cfg = ScanConfig(**cfg)
        # (asking outside Ray would start a local Ray instance)
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
        self.run, self.error, self.now = None, None, None
        self.loaded: dict = {}  # fill-mask model / embedder class -> (what it was loaded for, it)
        try:  # a model that cannot be loaded is reported by ready(), in one line, before any work
            self.scorer = make_scorer(self.cfg)
            self._bind(run or binding(cfg))
        except Exception as e:
            self.error = f"cannot load model {self.cfg.model}: {_first_line(e)}"

    def bind(self, run: dict) -> dict:
        """Prepares the actor for a run; ready()'s answer, with the error if that failed (the
        actor itself stays usable for another run)."""
        if self.error:
            return self.ready()
        try:
            self._bind(run)
        except Exception as e:
            return self.ready() | {"error": f"cannot load model {run['cfg']['model']}: {_first_line(e)}"}
        return self.ready()

    def _kept(self, slot, key, load):
        """What load() gives for `key` (None when the run asks for nothing: None): the one loaded
        for an earlier run when its key is the same, else loaded now, the old one released first."""
        if slot not in self.loaded or self.loaded[slot][0] != key:
            self.loaded.pop(slot, None)
            self.loaded[slot] = (key, None if key is None else load())
        return self.loaded[slot][1]

    def _kept_model(self, cls, name: str | None, cfg):
        """The `cls` model called `name` (a fill-mask model, an embedder) on the run's device."""
        return self._kept(cls, (name, cfg.device, cfg.trust_remote_code) if name else None,
                          lambda: cls(name, device=cfg.device, trust_remote_code=cfg.trust_remote_code))

    def _reference_scorer(self, cfg):
        """The scorer of the run's reference model, on the target's backend and device."""
        from scanner.scoring.factory import make_scorer, reference_config, scorer_key

        ref_cfg = reference_config(cfg) if cfg.reference_model else None
        return self._kept("reference", ref_cfg and scorer_key(ref_cfg), lambda: make_scorer(ref_cfg))

    def _frequencies(self, uri: str | None):
        """The smoothed relative frequency of every token id, (count + 1) / (tokens + vocabulary)
        as DC-PDD smooths them, from a `scanner frequencies` folder."""
        from scanner.frequencies.count import read_table

        def load():
            counts, _ = read_table(uri)
            return (counts + 1) / (counts.sum() + len(counts))

        return self._kept("frequencies", uri or None, load)

    def _bind(self, run: dict) -> None:
        from scanner.config import ScanConfig
        from scanner.scoring.factory import scorer_key

        if run == self.run:
            return
        cfg = ScanConfig(**run["cfg"])
        registry.load(cfg.score_modules)  # the user's own scores, in this worker too
        if scorer_key(cfg) != scorer_key(self.cfg):
            raise RuntimeError("this actor holds another model")  # the engine keys its pools so: never
        self.folder = None
        if run["folder"] is not None:
            from scanner.runfolder import RunFolder

            self.folder = RunFolder(run["folder"])
        self.constants, self.keep_text = run["constants"], run["keep_text"]
        from scanner.mlm import MaskFiller
        from scanner.scoring.embedder import Embedder

        # masked-LM neighbors are filled here, where the accelerator is
        self.filler = self._kept_model(MaskFiller, cfg.mlm_model, cfg)
        self.embedder = self._kept_model(Embedder, cfg.embedder, cfg)
        self.reference = self._reference_scorer(cfg)
        self.prefix_ids = {need: self.scorer.tokenize.whole(text) for need, text in run.get("prefixes", {}).items()}
        self.frequencies = self._frequencies(cfg.token_frequencies)
        own = self.scorer.hidden_size if self.scorer.capabilities.hidden_states else None
        emb_dim = self.embedder.dim if self.embedder else own
        self.projection = (stats.projection_matrix(emb_dim, cfg.proj_dim, cfg.neighbor_seed)
                           if cfg.proj_dim > 0 and emb_dim else None)
        self.detector = None
        if run["detector"] is not None:
            from scanner.detector.trained import load_trained

            self.detector = load_trained(run["detector"]["folder"], run["detector"]["kind"])
        self.cfg, self.run = cfg, run

    def progress(self) -> dict | None:
        """How far the shard being scored is ({shard, rows, done, tokens}), or None. The engine
        calls it in the actor's "progress" concurrency group: answered from its own thread while
        score_shard runs, and printed inside long shards."""
        return self.now

    def ready(self) -> dict:
        """Where the actor runs and what it can give; `error` when its model did not load."""
        if self.error:
            return {"error": self.error, "node": self.node_id}
        return {"error": None, "node": self.node_id, "cores": len(os.sched_getaffinity(0)),
                "device": self.scorer.device, "capabilities": asdict(self.scorer.capabilities)}

    def score_batch(self, batch: pa.Table) -> pa.Table:
        """Feature rows of a batch of perturbed samples (fill, score, embed: one scorer call)."""
        originals = batch["text"].to_pylist()
        neighbors = batch["nb_texts"].to_pylist()
        if self.filler is not None:
            filled = iter(self.filler.fill([t for nbs in neighbors for t in nbs]))
            neighbors = [[next(filled) for _ in nbs] for nbs in neighbors]
        flat = originals + [t for nbs in neighbors for t in nbs]
        if "image" in batch.column_names:  # image-text samples: each text given its image (the vlm backend)
            images = batch["image"].to_pylist() + [b for nbs in batch["nb_images"].to_pylist() for b in nbs]
            scores = self.scorer.score_pairs(flat, images)
        else:
            scores = self.scorer.score_texts(flat, batch_tokens=self.cfg.batch_tokens)
        if self.embedder is not None:
            for score, emb in zip(scores, self.embedder.embed(flat)):
                score.embedding = emb
        refs, more = self._more_inputs(originals)
        rows, offset = [], len(originals)
        for i, text in enumerate(originals):
            nb = scores[offset: offset + len(neighbors[i])]
            offset += len(neighbors[i])
            rows.append(stats.sample_features(text, scores[i], nb, self.projection, self.cfg.scores,
                                              self.cfg.score_modules, reference=refs[i], inputs=more[i]))
        cols = {name: batch[name] for name in PASSED_THROUGH}
        schema = feature_schema(self.cfg.score_modules, self.cfg.optional_settings())
        for field in schema:
            if field.name not in cols:
                cols[field.name] = pa.array([r.get(field.name) for r in rows], field.type)
        table = pa.table({f.name: cols[f.name] for f in schema}).cast(schema)
        if self.keep_text:  # and the images of image-text samples: the blind baseline reads both
            table = table.append_column("text", batch["text"])
            if "image" in batch.column_names:
                table = table.append_column("image", batch["image"])
        return table

    def _more_inputs(self, texts: list[str]) -> tuple[list, list[dict]]:
        """Per text, what the run's optional settings add (registry.SETTING_OF_NEED): its TextScore
        under the reference model with whether both models cut it into the same token ids (only
        then do per-token comparisons mean anything; None without one), and {input: value} of the
        log-probs of its tokens after each prefix and of its tokens' ids and frequencies. The
        texts are tokenized once for all; neighbors get none of these."""
        refs: list = [None] * len(texts)
        more: list[dict] = [{} for _ in texts]
        if self.reference is None and not self.prefix_ids and self.frequencies is None:
            return refs, more
        ids, truncated = self.scorer.tokenize(texts)
        if self.reference is not None:
            same = [a == b for a, b in zip(ids, self.reference.tokenize(texts)[0])]
            refs = list(zip(self.reference.score_texts(texts, batch_tokens=self.cfg.batch_tokens), same))
        for need, prefix in self.prefix_ids.items():
            rows = [with_prefix(prefix, r, self.scorer.tokenize.max_length) for r in ids]
            for m, r, s in zip(more, ids, self.scorer.score_token_ids(rows, truncated, batch_tokens=self.cfg.batch_tokens)):
                m[need] = s.token_logprobs[len(s.token_logprobs) - (len(r) - 1):]
        if self.frequencies is not None:
            for m, r in zip(more, ids):
                m["token_ids"] = np.asarray(r[1:], dtype=np.int64)
                m["token_frequencies"] = self.frequencies[m["token_ids"]]
        return refs, more

    def score_shard(self, shard: dict, read: tuple[dict, pa.Table | None], threads: int | None = None,
                    run: dict | None = None) -> dict:
        """Scores the shard that its read task produced, writes its features and then its
        completion record into the run folder, and returns that record. `threads` (torch's CPU
        threads) and `run` (the binding) come with every call: Ray restarts a dead actor with the
        arguments it was first made with, which may be another run's."""
        faults.maybe_fail("score_shard")
        if run is not None:
            self._bind(run)
        if threads:
            import torch

            torch.set_num_threads(threads)
        info, samples = read
        if info.get("error"):
            return {"shard": shard["name"], "error": info["error"]}
        t0 = time.perf_counter()
        step, parts = self.cfg.samples_per_call, []
        before = dict(getattr(self.scorer, "positions", None) or {})
        self.now = {"shard": shard["name"], "rows": samples.num_rows, "done": 0, "tokens": 0}
        try:
            for i in range(0, samples.num_rows, step):
                parts.append(self.score_batch(samples.slice(i, step)))
                self.now = self.now | {"done": i + parts[-1].num_rows, "tokens": self.now["tokens"] + _tokens(parts[-1])}
                faults.maybe_pause("mid_shard")
        finally:
            self.now = None
        features = pa.concat_tables(parts) if parts else None
        per_source = Counter(samples["source"].to_pylist())
        flagged: Counter = Counter()
        if features is not None:
            for col, value in self.constants.items():
                features = features.append_column(col, pa.array([value] * features.num_rows, pa.string()))
            if self.detector is not None:
                import polars as pl

                prob, flags = self.detector.score(pl.from_arrow(features))
                features = features.append_column("detector", pa.array([self.detector.kind] * len(prob)))
                features = features.append_column("member_prob", pa.array(prob)).append_column("flagged", pa.array(flags))
                flagged = Counter(s for s, f in zip(samples["source"].to_pylist(), flags) if f)
        scored = samples.num_rows
        counts = info["counts"] | {"scored": scored}
        if counts["read"] != scored + counts["quarantined"] + counts.get("unsampled", 0):  # nothing lost, per shard
            raise RuntimeError(f"shard {shard['name']}: {counts['read']} read != {scored} scored + "
                               f"{counts['quarantined']} quarantined + {counts.get('unsampled', 0)} not sampled")
        tokens = _tokens(features) if scored else 0
        record = {"shard": shard["name"], "uri": shard["uri"], "first_row": shard["first_row"], "counts": counts,
                  "tokens": tokens, "per_source": {s: [n, flagged[s]] for s, n in sorted(per_source.items())},
                  "documents": info.get("documents"), "bytes_read": info.get("bytes_read", 0),
                  "read_on": info["node"], "scored_on": self.node_id,
                  "positions": _positions_since(before, getattr(self.scorer, "positions", None)),
                  "seconds": {"read": info["seconds"], "score": round(time.perf_counter() - t0, 3)}}
        self.folder.finish_shard(shard["name"], features, record)
        return record


def _tokens(features: pa.Table) -> int:
    """Tokens scored for these feature rows: the texts' and their neighbors'."""
    return int(pc.sum(features["n_tokens"]).as_py() + pc.sum(features["nb_tokens"]).as_py())


def _positions_since(before: dict, now: dict | None) -> dict | None:
    """Real and padded positions of the forward passes since `before` (None: a scorer that pads
    nothing it could count, as vLLM's continuous batching)."""
    return None if now is None else {k: now[k] - before.get(k, 0) for k in now}

"""Image-text samples: the image blind baseline on scikit-learn's digits."""

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scanner.cli import main
from scanner.images import encode
from scanner.toy_images import captions, digit_images


def digit_split(path, n, seed, member_image, non_member_image, corrupt=False):
    """n digits (a seeded draw), half members; each image encoded by the function of its side;
    written as Parquet with the image bytes in `image`."""
    images, digits = digit_images()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(images))[:n]
    label = rng.permutation(np.arange(n) % 2)
    caps = captions(digits, seed)
    rows = {"id": [f"d{i}" for i in idx], "text": [caps[i] for i in idx], "label": label.tolist(),
            "image": [(member_image if y else non_member_image)(images[i]) for i, y in zip(idx, label)]}
    if corrupt:
        for k, v in (("id", "broken"), ("text", "a digit whose file was cut short"), ("label", 1),
                     ("image", rows["image"][0][:40])):
            rows[k].append(v)
    pq.write_table(pa.table(rows), path)
    return path


@pytest.mark.slow
def test_image_baseline_sees_how_images_were_stored(tmp_path):
    """The same kind of digits, members saved at JPEG quality 95 and non-members at 40: the image
    alone gives the split away, and the report says which features do; a corrupt image is
    quarantined. Two colour maps (same encoding) give it away as well."""
    data = digit_split(tmp_path / "jpeg.parquet", 240, 0, lambda im: encode(im, "JPEG", quality=95),
                       lambda im: encode(im, "JPEG", quality=40), corrupt=True)
    out = tmp_path / "out"
    assert main(["baseline", str(data), "--image-col", "image", "--out", str(out), "--folds", "3",
                 "--n-boot", "200"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 240 and m["auc"] > 0.95 and m["verdict"]["status"] == "leaky"
    assert "image and caption" in m["verdict"]["text"]
    assert m["corpus"]["quarantined_by_reason"] == {"undecodable image": 1}
    assert max(m["models"][f]["auc"] for f in ("logreg_word", "logreg_char", "naive_bayes")) < 0.7  # captions: no leak
    assert {"logreg_img_meta", "random_forest_img_all"} <= set(m["models"])
    top = m["top_image_features"][0]
    assert abs(top["auc"] - 0.5) > 0.45  # one feature alone separates them (quantisation, bytes, spectrum)
    html = (out / "report.html").read_text()
    assert "image feature" in html and top["feature"] in html

    from matplotlib import colormaps
    from PIL import Image

    def recolour(cmap):
        def f(im):
            grey = np.asarray(im.convert("L"), dtype=np.float64) / 255
            return encode(Image.fromarray((colormaps[cmap](grey)[:, :, :3] * 255).astype(np.uint8)))
        return f

    data = digit_split(tmp_path / "cmap.parquet", 240, 1, recolour("viridis"), recolour("magma"))
    assert main(["baseline", str(data), "--image-col", "image", "--out", str(tmp_path / "cmap"), "--folds", "3",
                 "--n-boot", "200"]) == 0
    m = json.loads((tmp_path / "cmap" / "metrics.json").read_text())
    assert m["auc"] > 0.95 and m["verdict"]["status"] == "leaky"


@pytest.mark.heavy  # one seed of what test_image_baseline_is_calibrated_over_many_random_splits checks 40 times
def test_image_baseline_on_a_random_split_is_at_chance(tmp_path):
    data = digit_split(tmp_path / "iid.parquet", 300, 2, encode, encode)
    out = tmp_path / "out"
    assert main(["baseline", str(data), "--image-col", "image", "--out", str(out), "--n-boot", "500",
                 "--seed", "2"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    lo, hi = m["auc_ci"]
    assert lo <= 0.5 <= hi and m["verdict"]["status"] == "usable"
    assert pl.read_parquet(out / "scores.parquet").height == 300


@pytest.mark.heavy
@pytest.mark.timeout(3600)
def test_image_baseline_is_calibrated_over_many_random_splits():
    """Null calibration: 40 i.i.d. member/non-member splits of 200 PNG digits. The verdict must
    not call a random split leaky or shifted more often than its one-sided 2.5% allows. (With a
    bootstrap over the out-of-fold scores alone it called 4 of 40 shifted: that interval misses
    the variance of the cross-validation itself.)"""
    from scanner.baseline.run import run_baseline

    images, digits = digit_images()
    caps = captions(digits)
    runs = []
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        idx = rng.permutation(len(images))[:200]
        df = pl.DataFrame({"sample_id": [f"d{i}" for i in idx], "label": rng.permutation(np.arange(200) % 2),
                           "source": ["s"] * 200, "text": [caps[i] for i in idx],
                           "image": [encode(images[i]) for i in idx]})
        m = run_baseline(df, folds=5, seed=seed, n_boot=500, n_jobs=2).metrics
        runs.append((m["auc"], m["auc_ci"][1], m["verdict"]["status"], m["auc_ci"][0], m["auc_ci_bootstrap"][0]))
    aucs = np.array([r[0] for r in runs])
    flagged = sum(r[2] != "usable" for r in runs)
    print(f"mean AUC {aucs.mean():.3f} (sd {aucs.std():.3f}); not usable {flagged} of {len(runs)}; "
          f"interval below 0.5 {sum(r[1] < 0.5 for r in runs)}; bootstrap alone above 0.5 {sum(r[4] > 0.5 for r in runs)}; "
          f"mean half-width {np.mean([(r[1] - r[3]) / 2 for r in runs]):.3f}")
    assert flagged <= 3, runs  # P(>= 4 of 40 | 2.5%) < 2%
    assert 0.40 < aucs.mean() < 0.55, aucs


def test_image_neighbors_are_seeded_mild_and_invert_exactly():
    from scanner.images import decode_rgb
    from scanner.neighbors import NeighborConfig, make_pair_neighbors

    images, digits = digit_images()
    image, text = encode(images[5]), captions(digits)[5]
    original = np.asarray(decode_rgb(image), dtype=np.float64)
    cfg = NeighborConfig(k=12)  # every image kind twice
    texts, nbs, kinds = make_pair_neighbors(text, image, "s5", cfg)
    assert texts == [text] * 12 and kinds == list(cfg.image_kinds) * 2
    assert (texts, nbs, kinds) == make_pair_neighbors(text, image, "s5", cfg)  # same config, same bytes
    assert make_pair_neighbors(text, image, "s6", cfg)[1] != nbs  # another sample, other draws
    for kind, nb in zip(kinds, nbs):
        px = np.asarray(decode_rgb(nb), dtype=np.float64)
        assert px.shape == original.shape
        change = np.abs(px - original).mean()
        if kind == "invert":
            assert np.array_equal(px, 255 - original)
        else:
            assert 0 < change < 40, (kind, change)  # changed, but still the same picture
    assert nbs[:6] != nbs[6:]  # the second round of each kind draws again

    texts, nbs, kinds = make_pair_neighbors(text, image, "s5", NeighborConfig(k=4, perturb="text"))
    assert nbs == [image] * 4 and kinds == ["delete", "duplicate", "swap", "random_word"] and text not in texts
    texts, nbs, kinds = make_pair_neighbors(text, image, "s5", NeighborConfig(k=2, perturb="both"))
    assert kinds == ["noise+delete", "blur+duplicate"] and image not in nbs and text not in texts
    with pytest.raises(ValueError, match="unknown image neighbor kinds"):
        NeighborConfig(image_kinds=("sepia",))
    with pytest.raises(ValueError, match="neighbors perturb 'all'"):
        NeighborConfig(perturb="all")


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """A tiny LLaVA trained on 120 of 240 digit-caption pairs until its loss is 0.8 (~30 s)."""
    from scanner.toy_images import train_tiny_llava

    images, digits = digit_images()
    caps = captions(digits)
    idx = np.random.default_rng(0).permutation(len(images))[:240]
    members = idx[:120]  # the other 120 are held out
    out = tmp_path_factory.mktemp("vlm")
    info = train_tiny_llava([images[i] for i in members], [caps[i] for i in members], out,
                            [caps[i] for i in idx], target_loss=0.8, log=lambda s: None)
    assert info["train_loss"] <= 0.8
    pairs = [(caps[i], encode(images[i]), f"d{i}") for i in idx]
    return out, pairs, np.r_[np.ones(120), np.zeros(120)]


@pytest.mark.slow
def test_vlm_scorer_is_exact_and_its_loss_separates_members(tiny_vlm):
    """The text's token log-probs given the image equal a direct forward pass, and their loss
    tells members from held-out pairs."""
    import torch

    from scanner.metrics import roc_auc
    from scanner.scoring import stats
    from scanner.scoring.vlm import VLMScorer

    folder, pairs, y = tiny_vlm
    scorer = VLMScorer(str(folder))
    texts, images = [p[0] for p in pairs], [p[1] for p in pairs]
    scores = scorer.score_pairs(texts, images, pairs_per_batch=7)  # batches with padding
    from scanner.images import decode_rgb

    for i in (0, 130):
        enc = scorer.processor(images=[decode_rgb(images[i])], text=["<image>" + texts[i]], return_tensors="pt")
        with torch.no_grad():
            logp = scorer.model(**enc).logits[0].log_softmax(-1)
        ids = enc["input_ids"][0]
        start = int((ids == scorer.image_token_id).nonzero().max()) + 1
        direct = logp[start - 1:-1].gather(-1, ids[start:, None])[:, 0].numpy()
        assert np.allclose(scores[i].token_logprobs, direct, atol=1e-5) and scores[i].n_tokens == len(direct) + 1
        assert scores[i].mu.shape == direct.shape and scores[i].embedding.shape == (scorer.hidden_size,)
    loss = np.array([stats.loss(s.token_logprobs) for s in scores])
    assert roc_auc(y, -loss) > 0.9


def pair_table(pairs, y, path, corrupt=True):
    """The fixture's pairs as Parquet (image bytes, label, subset seen/unseen), plus one image cut short."""
    rows = {"id": [p[2] for p in pairs], "text": [p[0] for p in pairs], "image": [p[1] for p in pairs],
            "label": y.astype(int).tolist(), "subset": ["seen" if v else "unseen" for v in y]}
    if corrupt:
        for k, v in (("id", "broken"), ("text", "a digit whose file was cut short"), ("image", pairs[0][1][:40]),
                     ("label", 1), ("subset", "seen")):
            rows[k].append(v)
    pq.write_table(pa.table(rows), path)
    return str(path)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_text_scan_train_evaluate_and_sweep(tiny_vlm, ray_local, tmp_path):
    """The same commands as for text plus --image-col: a corrupt image is quarantined, the image
    neighbors separate members per kind (colour inversion the strongest), the detectors train
    and evaluate with the image baseline beside them, and a sweep flags the seen pairs."""
    from scanner.evaluate import by_neighbor_kind
    from scanner.metrics import roc_auc
    from scanner.runfolder import RunFolder

    folder, pairs, y = tiny_vlm
    data = pair_table(pairs, y, tmp_path / "pairs.parquet")
    scan = tmp_path / "scan"
    assert main(["scan", data, "--image-col", "image", "--model", str(folder), "--neighbors", "6",
                 "--label-col", "label", "--shard-size", "100", "--out", str(scan)]) == 0
    m = json.loads((scan / "manifest.json").read_text())
    assert m["config"]["backend"] == "vlm" and m["counts"]["scored"] == 240
    assert m["counts"]["quarantined_by_reason"] == {"undecodable image": 1}
    features = RunFolder(scan).features()
    stored = dict(zip([p[2] for p in pairs], [p[1] for p in pairs]))
    assert all(stored[s] == b for s, b in zip(features["sample_id"], features["image"]))  # kept as stored
    assert features["nb_kinds"][0].to_list() == ["noise", "blur", "crop", "rotate", "jpeg", "invert"]

    per_kind = {r["kind"]: r["auc"] for r in by_neighbor_kind(features, features["label"].to_numpy(), 200, 0)}
    # measured: invert 0.698, crop 0.681, rotate 0.664, noise 0.54, jpeg and blur 0.51 (this 32x32
    # vision tower hardly notices them): the kind training never used is the strongest, as FiMMIA
    # reports. (An earlier machine measured invert 0.818, crop 0.77 and the neighborhood 0.843 at
    # the same commit: the tiny model's training follows the CPU's rounding.)
    assert max(per_kind, key=per_kind.get) == "invert" and per_kind["invert"] > 0.65, per_kind
    assert roc_auc(features["label"].to_numpy(), -features["neighborhood"].to_numpy()) > 0.68  # measured 0.727

    assert main(["train", str(scan), "--out", str(tmp_path / "det")]) == 0
    assert main(["evaluate", str(scan), "--detector", str(tmp_path / "det"), "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"fimmia detector", "tabular detector"} <= set(ev["scores"]) and ev["scores"]["loss"]["auc"] > 0.9
    assert [r["kind"] for r in ev["by_neighbor_kind"]] == list(per_kind)
    assert "image and caption" in ev["baseline_verdict"]["text"]
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "Neighborhood score by neighbor kind" in html and "invert" in html

    corpus = pair_table(pairs[:40] + pairs[-40:], np.r_[y[:40], y[-40:]], tmp_path / "corpus.parquet")
    out = tmp_path / "sweep"
    assert main(["sweep", corpus, "--image-col", "image", "--detector", str(tmp_path / "det"),
                 "--source-col", "subset", "--out", str(out)]) == 0
    sw = json.loads((out / "metrics.json").read_text())
    assert sw["sources"]["seen"]["n"] == 40 and sw["sources"]["unseen"]["n"] == 40
    assert sw["sources"]["seen"]["flag_rate"] > sw["sources"]["unseen"]["flag_rate"] + 0.5, sw["sources"]
    assert RunFolder(out).manifest["counts"]["quarantined_by_reason"] == {"undecodable image": 1}

    # nightly: eval sets of image-text pairs take the detector's image column and model; the sets'
    # scans reuse the sweep's loaded actors
    for name, part in (("seen", pairs[:30]), ("unseen", pairs[-30:])):
        pq.write_table(pa.table({"id": [p[2] for p in part], "text": [p[0] for p in part],
                                 "image": [p[1] for p in part]}), tmp_path / f"{name}.parquet")
    config = tmp_path / "nightly.yaml"
    config.write_text(json.dumps({"detector": str(tmp_path / "det"), "eval_sets": [
        {"name": n, "data": str(tmp_path / f"{n}.parquet")} for n in ("seen", "unseen")]}))
    assert main(["nightly", "--config", str(config), "--out", str(tmp_path / "nights"), "--run-name", "n1"]) == 1
    night = json.loads((tmp_path / "nights" / "n1" / "metrics.json").read_text())
    seen, unseen = night["sets"]["seen"], night["sets"]["unseen"]
    assert seen["status"] == "contaminated" and unseen["status"] == "clean", night["sets"]
    assert seen["counts"]["scored"] == unseen["counts"]["scored"] == 30

    # infer: the set test on the same pairs (images and captions in the shift check too)
    code = main(["infer", str(tmp_path / "seen.parquet"), "--reference", str(tmp_path / "unseen.parquet"),
                 "--image-col", "image", "--model", str(folder), "--neighbors", "2", "--out", str(tmp_path / "infer")])
    inf = json.loads((tmp_path / "infer" / "metrics.json").read_text())
    assert inf["blind_baseline"]["data"] == "image and caption" and inf["blind_baseline"]["verdict"]["usable_for_mia"]
    assert code == 1 and inf["p_value"] < 0.01, inf["p_value"]


@pytest.mark.heavy
@pytest.mark.timeout(1800)
def test_neighbor_detector_on_a_tiny_llava_trained_on_half_of_300_pairs(ray_local, tmp_path):
    """The acceptance figure: a tiny LLaVA trained on 150 of 300 digit-caption pairs to loss 0.45;
    the FiMMIA detector (image neighbors only, 24 per pair) separates members from held-out pairs
    with AUC > 0.8, measured out of fold over all 300 (each pair scored by detectors that never
    saw it; the single train/test split of `scanner train` holds only ~60 test pairs)."""
    from scanner.detector.data import labelled_features
    from scanner.train import cross_fitted_scores
    from scanner.metrics import roc_auc
    from scanner.runfolder import RunFolder
    from scanner.toy_images import train_tiny_llava

    images, digits = digit_images()
    caps = captions(digits)
    idx = np.random.default_rng(0).permutation(len(images))[:300]
    info = train_tiny_llava([images[i] for i in idx[:150]], [caps[i] for i in idx[:150]], tmp_path / "model",
                            [caps[i] for i in idx], target_loss=0.45, max_epochs=200, log=lambda s: None)
    assert info["train_loss"] <= 0.45
    pairs = [(caps[i], encode(images[i]), f"d{i}") for i in idx]
    data = pair_table(pairs, np.r_[np.ones(150), np.zeros(150)], tmp_path / "pairs.parquet", corrupt=False)
    scan = tmp_path / "scan"
    assert main(["scan", data, "--image-col", "image", "--model", str(tmp_path / "model"), "--neighbors", "24",
                 "--label-col", "label", "--out", str(scan)]) == 0
    assert main(["train", str(scan), "--out", str(tmp_path / "det")]) == 0
    assert main(["evaluate", str(scan), "--detector", str(tmp_path / "det"), "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    df = labelled_features(RunFolder(scan))
    y = df["label"].to_numpy()
    crossfit = cross_fitted_scores(df, 0, 5)
    auc = {kind: roc_auc(y, crossfit[kind].to_numpy()) for kind in ("fimmia", "tabular")}
    print(f"out of fold over 300: {auc}; on the {ev['n']} test pairs: "
          f"{ {k: round(s['auc'], 3) for k, s in ev['scores'].items() if 'detector' in k or k == 'neighborhood'} }; "
          f"by kind {[(r['kind'], round(r['auc'], 3)) for r in ev['by_neighbor_kind']]}")
    assert auc["fimmia"] > 0.8, auc  # measured 0.846

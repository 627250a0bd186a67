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


@pytest.mark.slow
def test_image_baseline_on_a_random_split_is_at_chance(tmp_path):
    data = digit_split(tmp_path / "iid.parquet", 300, 2, encode, encode)
    out = tmp_path / "out"
    assert main(["baseline", str(data), "--image-col", "image", "--out", str(out), "--n-boot", "500",
                 "--seed", "2"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    lo, hi = m["auc_ci"]
    assert lo <= 0.5 <= hi and m["verdict"]["status"] == "usable"
    assert pl.read_parquet(out / "scores.parquet").height == 300


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

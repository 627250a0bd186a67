import os
import subprocess
import sys

import pytest

from scanner.neighbors import NeighborConfig, make_neighbors, n_changes, perturb, rng_for

TEXT = "The quick brown fox\njumps over the lazy dog.\n\n  It was   a sunny day in the park today."


def test_same_config_same_neighbors_across_processes_with_different_hash_seeds():
    code = ("from scanner.neighbors import NeighborConfig, make_neighbors; import json; "
            f"print(json.dumps(make_neighbors({TEXT!r}, 'id-7', NeighborConfig(k=24, seed=3))))")
    outs = {subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONHASHSEED": s},
                           capture_output=True, text=True, check=True).stdout for s in ("0", "12345")}
    assert len(outs) == 1
    texts, kinds = make_neighbors(TEXT, "id-7", NeighborConfig(k=24, seed=3))
    assert len(texts) == 24 and kinds[:4] == ["delete", "duplicate", "swap", "random_word"]
    assert texts != make_neighbors(TEXT, "id-7", NeighborConfig(k=24, seed=4))[0]  # the seed matters
    assert texts != make_neighbors(TEXT, "id-8", NeighborConfig(k=24, seed=3))[0]  # so does the id


def test_change_count_is_ten_percent_clamped():
    cfg = NeighborConfig(min_changes=2, max_changes=5)
    assert n_changes(10, cfg) == 2  # 1 -> clamped up
    assert n_changes(40, cfg) == 4
    assert n_changes(400, cfg) == 5  # 40 -> clamped down
    assert n_changes(1, cfg) == 1  # never more than the words there are


@pytest.mark.parametrize("kind", ["delete", "duplicate", "swap", "random_word", "case_invert", "mlm"])
def test_each_kind_edits_only_chosen_words_and_keeps_other_whitespace(kind):
    cfg = NeighborConfig(min_changes=2, max_changes=2)
    words = TEXT.split()
    out = perturb(TEXT, kind, rng_for(0, "s", 1), cfg)
    assert out != TEXT
    new = out.split()
    if kind == "delete":
        assert len(new) == len(words) - 2
    elif kind == "duplicate":
        assert len(new) == len(words) + 2
    elif kind in ("swap", "case_invert"):
        assert len(new) == len(words)
        if kind == "swap":
            assert sorted(new) == sorted(words)
        else:
            assert sum(a != b for a, b in zip(words, new)) == 2
            assert [a.lower() for a in words] == [b.lower() for b in new]
    elif kind == "random_word":
        assert len(new) == len(words) and set(new) <= set(words)
    # untouched layout survives: the paragraph break and the run of three spaces
    if kind != "delete":
        assert "\n\n" in out and "   " in out


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown neighbor kinds"):
        NeighborConfig(kinds=("delete", "paraphrase"))

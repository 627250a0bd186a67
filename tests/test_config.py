import json

import pytest

from scanner.config import ScanConfig, load_config, renamed
from scanner.errors import InputError
from scanner.scoring import registry


def test_toml_and_yaml_configs_with_flag_overrides(tmp_path):
    toml = tmp_path / "scan.toml"
    toml.write_text('model = "some/model"\nneighbors = 12\nneighbor_kinds = ["swap", "delete"]\n')
    cfg = load_config(str(toml), {"neighbors": 6, "neighbor_seed": None})
    assert (cfg.model, cfg.neighbors, cfg.neighbor_kinds, cfg.neighbor_seed) == ("some/model", 6, ["swap", "delete"], 0)
    yml = tmp_path / "scan.yaml"
    yml.write_text("model: m\nbatch_tokens: 4096\n")
    assert load_config(str(yml), {}).batch_tokens == 4096


@pytest.mark.parametrize("text, message", [
    ("model: m\nneigbors: 3\n", "unknown options \\['neigbors'\\]"),
    ("model: m\nneighbors: -1\n", "neighbors = -1 is out of range"),
    ("model: m\nneighbor_kinds: [paraphrase]\n", "unknown neighbor kinds"),
    ("neighbors: 3\n", "no model"),
    ("- a list\n", "expected a mapping"),
    ("model: [unclosed\n", "not valid YAML"),
])
def test_bad_configs_are_clear_input_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(str(path), {})


def test_scoring_hash_ignores_scheduling_knobs():
    a = ScanConfig(model="m")
    assert a.scoring_hash() == ScanConfig(model="m", actors=8, batch_tokens=99, gpus_per_actor=1).scoring_hash()
    assert a.scoring_hash() != ScanConfig(model="m", neighbor_seed=1).scoring_hash()


def test_every_field_says_once_what_it_decides():
    from dataclasses import fields

    roles = {f.name: f.metadata["role"] for f in fields(ScanConfig)}
    assert set(roles.values()) == {"model", "features", "data", "scheduling"}
    cfg = ScanConfig(model="m", backend="vlm", image_col="image")  # an image-text run: every field counts
    # the scores' options are stood for by their identity (every registered score, Gap-K% among them)...
    features = {n for n, r in roles.items() if r == "features"}
    assert set(cfg.feature_settings()) == features - {"scores"} | {"score_versions"}
    # ... absent for the scores every run computed before the registry
    before = ScanConfig(model="m", backend="vlm", image_col="image", scores=list(registry.BEFORE_REGISTRY))
    assert set(before.feature_settings()) == features - {"scores", "score_modules"}
    assert ScanConfig(model="m", scores=["loss"]).feature_settings()["score_versions"] == {"loss": 1}
    assert set(cfg.inherited()) == {n for n, r in roles.items() if r in ("model", "features")}
    # every field but the scheduling ones changes the hash a resume is checked against
    for name, role in roles.items():
        value = getattr(cfg, name)
        changed = ScanConfig(**{"model": "m", "backend": "vlm", "image_col": "image", name: (value + 1 if isinstance(value, (int, float)) and not isinstance(value, bool)
                                                    else ["scanner.scoring.scores.loss"] if name == "score_modules"  # importable
                                                    else [*value, "x"] if isinstance(value, list) else "other")})
        assert (changed.scoring_hash() == cfg.scoring_hash()) == (role == "scheduling"), name


def test_config_validation_does_not_import_a_backend():
    import subprocess
    import sys

    code = ("import sys; from scanner.config import ScanConfig; ScanConfig(model='m', backend='vllm').validate(); "
            "print(sorted(m for m in sys.modules if m.startswith(('scanner.scoring.vllm', 'vllm', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_image_settings_leave_a_text_runs_hash_as_it_was():
    """Run folders made before image-text samples existed still resume: in a text run the image
    settings decide nothing, so they are not hashed."""
    before = list(registry.BEFORE_REGISTRY)  # the scores every run computed then
    text = ScanConfig(model="m", scores=before)
    assert text.scoring_hash() == "ba79dc049bf68697"  # the hash of this config before images
    assert ScanConfig(model="m", scores=before, perturb="both", image_neighbor_kinds=["blur"]).scoring_hash() == \
        text.scoring_hash()
    assert ScanConfig(model="m", perturb="both").scoring_hash() == ScanConfig(model="m").scoring_hash()


@pytest.mark.parametrize("overrides, message", [
    ({"image_col": "image", "backend": "hf"}, "scored by a vision-language model"),
    ({"backend": "vlm"}, "pass --image-col"),
    ({"image_col": "image", "embedder": "e"}, "embedder does not see the image"),
    ({"image_col": "image", "perturb": "all"}, "neighbors perturb 'all'"),
    ({"image_col": "image", "image_neighbor_kinds": ["sepia"]}, "unknown image neighbor kinds"),
    ({"image_col": "image", "backend": "vllm"}, "scored by a vision-language model"),
])
def test_image_text_configs_are_checked_before_any_work(overrides, message):
    with pytest.raises(InputError, match=message):
        load_config(None, {"model": "m"} | overrides)


def test_an_image_column_implies_the_vlm_backend():
    assert load_config(None, {"model": "m", "image_col": "image"}).backend == "vlm"
    assert load_config(None, {"model": "m"}).backend == "hf"


def test_infer_on_a_detector_trained_with_neighbor_seed_7_keeps_it_and_the_set_tests_seed_apart(tmp_path):
    """`--seed` used to be both the neighbor seed and the set test's: its default 0 replaced a
    detector's `seed: 7`, and the detector was refused for features computed otherwise."""
    from scanner.cli import build_parser, infer_config
    from scanner.train import train_detectors
    from scanner.detector.trained import load_trained
    from tests.fake_scan import write_fake_run

    write_fake_run(tmp_path / "run", n=300, signal=2.0)
    train_detectors(str(tmp_path / "run"), str(tmp_path / "det"), seed=0)
    saved = tmp_path / "det" / "scan_config.json"
    old = json.loads(saved.read_text())
    old["seed"] = 7  # as detectors were saved before the seeds were told apart
    del old["neighbor_seed"]
    saved.write_text(json.dumps(old))
    detector = load_trained(str(tmp_path / "det"), "tabular")
    for flags, neighbor_seed in (([], 7), (["--seed", "3"], 7), (["--neighbor-seed", "7", "--seed", "3"], 7)):
        args = build_parser().parse_args(["infer", "s.jsonl", "--reference", "r.jsonl", "--out", "o",
                                          "--detector", str(tmp_path / "det"), *flags])
        cfg = infer_config(args, detector)
        assert cfg.neighbor_seed == neighbor_seed
        detector.check_usable_with(cfg)  # the same features: usable
    args = build_parser().parse_args(["infer", "s.jsonl", "--reference", "r.jsonl", "--out", "o", "--neighbor-seed", "1"])
    with pytest.raises(InputError, match="neighbor_seed 7 \\(trained\\) vs 1"):
        detector.check_usable_with(infer_config(args, detector))
    assert ScanConfig(model="m", neighbor_seed=7).scoring_hash() == ScanConfig(**renamed({"model": "m", "seed": 7})).scoring_hash()
    legacy = tmp_path / "scan.yaml"
    legacy.write_text("model: m\nseed: 5\n")  # a config file from before: `seed` was the neighbor seed
    assert load_config(str(legacy), {}).neighbor_seed == 5


def test_nothing_outside_the_factory_tests_a_backends_name():
    """A backend declares what it is (scoring.options.BACKENDS); code asks that, so a new backend
    is one declaration and one scorer module."""
    import ast
    from pathlib import Path

    from scanner.scoring.options import BACKENDS

    root = Path(__file__).resolve().parents[1] / "scanner"
    allowed = {root / "scoring" / "factory.py", root / "scoring" / "options.py"}
    tests = []
    for path in sorted(set(root.rglob("*.py")) - allowed):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Compare):
                parts = [node.left, *node.comparators]
                names = [p.value for p in parts if isinstance(p, ast.Constant) and p.value in BACKENDS]
                if names and "backend" in ast.get_source_segment(source, node):
                    tests.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not tests

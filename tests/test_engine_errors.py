"""Clear errors, one line and exit 2, before any shard is scored: a model that cannot be loaded
(a wrong path, a checkpoint that does not load in the actors) and scoring actors that would
leave no CPU for reading."""

import json

import pytest

from scanner.cli import main
from tests.conftest import tiny_gpt2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def one_cpu_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"a short text number {i}"}) + "\n" for i in range(5)))
    return str(path)


def test_a_model_path_that_does_not_exist_stops_at_once(data, tmp_path, capsys):
    assert main(["scan", data, "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load model" in err and "no such folder" in err
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_checkpoint_that_does_not_load_is_one_line_and_does_not_block_a_corrected_run(one_cpu_ray, data, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    assert main(["scan", data, "--model", str(broken), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("scanner: error:"))
    assert f"cannot load model {broken}" in line and "Traceback" not in err
    # the claim was made (run.json first) but no shard finished: the corrected command is not refused
    from scanner.inputs import list_inputs
    from scanner.runfolder import RunFolder

    folder = RunFolder(str(tmp_path / "run"))
    assert folder.run["config"]["model"] == str(broken) and not folder.done()
    with folder.claim({"kind": "scan", "scoring_hash": "a corrected model"}, {}, list_inputs([data])) as (run, _):
        assert run["scoring_hash"] == "a corrected model"


def test_actors_that_take_every_cpu_are_refused_instead_of_waiting_for_ever(one_cpu_ray, data, tmp_path, capsys):
    tiny_gpt2(tmp_path / "model")
    assert main(["scan", data, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "run")]) == 2
    assert "take every CPU of the cluster" in capsys.readouterr().err

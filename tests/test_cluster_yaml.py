from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_the_schema_shipped_in_ray():
    from ray.autoscaler._private.util import validate_config

    validate_config(load())  # raises on any schema violation
    broken = load() | {"max_wrokers": 3}  # and it does check: a misspelt key is refused
    with pytest.raises(Exception, match="max_wrokers"):
        validate_config(broken)


def test_cluster_yaml_keeps_our_rules():
    cfg = load()
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head takes no work
    image = cfg["docker"]["image"]
    assert ":" in image and not image.endswith(":latest")  # pinned
    start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start  # dashboard only through `ray dashboard`
    assert any("pip install" in c and "scanner" in c for c in cfg["setup_commands"])
    gpu_types = [n for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
    assert gpu_types and all(cfg["available_node_types"][n]["node_config"]["InstanceType"][0] in "gp" for n in gpu_types)


@pytest.mark.parametrize("manifest", ["rayjob-sweep.yaml", "raycronjob-nightly.yaml"])
def test_kuberay_manifests_run_our_jobs_with_valid_arguments(manifest):
    import shlex

    from scanner.cli import build_parser

    doc = yaml.safe_load((ROOT / "jobs" / "kuberay" / manifest).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayJob", "RayCronJob")
    spec = doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]
    python, script, *args = shlex.split(spec["entrypoint"])
    assert python == "python" and (ROOT / script).is_file()
    command = Path(script).stem  # jobs/sweep.py -> `scanner sweep`, jobs/nightly.py -> `scanner nightly`
    build_parser().parse_args([command, *args])  # exits (SystemExit) on an unknown or missing option
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head takes no work
    assert cluster["rayVersion"] == "2.60.0"
    images = [c["image"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]]
    assert all(":" in i and not i.endswith(":latest") for i in images)  # pinned

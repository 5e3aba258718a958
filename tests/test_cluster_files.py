"""The files in cluster/ parse and validate offline (Ray's own launcher schema), so they cannot
rot silently."""

from __future__ import annotations

import copy
import pathlib

import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = pathlib.Path(__file__).resolve().parent.parent / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_validates_against_rays_schema(name):
    config = load(name)
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["provider"]["type"] == name.split(".")[0]
    assert config["head_node_type"] in config["available_node_types"]
    setup = " ".join(config["setup_commands"])
    assert "distextract" in setup and "ray[default]" in setup


def test_schema_check_is_not_vacuous():
    import jsonschema

    config = load("aws.yaml")
    config["available_node_types"]["worker"]["min_wrokers"] = 1  # typo
    with pytest.raises(jsonschema.ValidationError, match="min_wrokers"):
        validate_config(prepare_config(config))


def test_rayjob_manifest_has_the_required_fields():
    job = load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("distextract extract ")
    assert "--workers" in spec["entrypoint"] and "--address auto" in spec["entrypoint"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert any("distextract" in p for p in runtime_env["pip"])
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"].startswith("rayproject/ray:")
    assert isinstance(head["rayStartParams"], dict)
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["replicas"] >= group["minReplicas"] >= 0
        assert group["maxReplicas"] >= group["replicas"]
        assert isinstance(group["rayStartParams"], dict)
        assert group["template"]["spec"]["containers"][0]["image"].startswith("rayproject/ray:")


def test_runtime_env_is_a_valid_ray_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = load("runtime_env.yaml")
    RuntimeEnv(**env)  # raises on unknown fields or bad types
    assert any("distextract" in p for p in env["pip"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_readme_shows_the_commands():
    text = (CLUSTER / "README.md").read_text()
    for command in ("ray up", "ray job submit", "-- distextract extract", "kubectl apply"):
        assert command in text

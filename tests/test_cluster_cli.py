"""Cluster YAMLs (validated offline against Ray's schema), KubeRay manifests, and the cluster /
submit commands through click's test runner with --dry-run."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from glidre_core.cli import main
from glidre_core.cluster import launcher_command, submit_command, validate_launcher_config
from paths import SHARED_DATA

ROOT = Path(__file__).resolve().parent.parent
AWS = ROOT / "cluster" / "aws-gpu.yaml"
KUBE = {name: ROOT / "cluster" / f"kuberay-{name}.yaml" for name in ("raycluster", "rayjob-extract", "rayjob-train")}


# -- cluster launcher YAML -------------------------------------------------------------------------
def test_aws_cluster_yaml_passes_rays_schema_with_an_idle_head_and_autoscaling_gpu_workers():
    cfg = validate_launcher_config(AWS)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # nothing is scheduled on the head
    assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert len(workers) == 1
    gpu = workers[0]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 2  # autoscaling from zero
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # GPU instance families
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    assert cfg["docker"]["image"].endswith("-gpu") and "2.60.0" in cfg["docker"]["image"]
    assert cfg["provider"]["type"] == "aws"


@pytest.mark.parametrize("breakage", ["unknown_key", "bad_type", "bad_head_type"])
def test_schema_validation_rejects_broken_configs(tmp_path, breakage):
    data = yaml.safe_load(AWS.read_text())
    broken = copy.deepcopy(data)
    if breakage == "unknown_key":
        broken["max_wrokers"] = 3
    elif breakage == "bad_type":
        broken["max_workers"] = "eight"
    else:
        broken["head_node_type"] = "no-such-node-type"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(Exception):  # jsonschema.ValidationError / ValueError from Ray
        validate_launcher_config(path)


def test_kuberay_manifest_is_refused_by_the_launcher_validator():
    with pytest.raises(ValueError, match="KubeRay"):
        validate_launcher_config(KUBE["raycluster"])


# -- KubeRay manifests -----------------------------------------------------------------------------
def _check_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"][0]["image"]
    assert spec["enableInTreeAutoscaling"] is True
    (group,) = spec["workerGroupSpecs"]
    assert 0 == group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert str(spec["rayVersion"]) == "2.60.0"


def test_kuberay_raycluster_manifest():
    doc = yaml.safe_load(KUBE["raycluster"].read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster" and doc["metadata"]["name"]
    _check_cluster_spec(doc["spec"])


@pytest.mark.parametrize("kind", ["extract", "train"])
def test_kuberay_rayjob_manifests_run_the_project_jobs(kind):
    doc = yaml.safe_load(KUBE[f"rayjob-{kind}"].read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", f"jobs/{kind}.py"] and (ROOT / argv[1]).exists()
    config = argv[argv.index("--config") + 1]
    assert (ROOT / config).exists()
    assert spec["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["HF_HUB_OFFLINE"] == "1"
    _check_cluster_spec(spec["rayClusterSpec"])
    cluster = yaml.safe_load(KUBE["raycluster"].read_text())
    assert spec["rayClusterSpec"] == cluster["spec"]  # one cluster shape everywhere
    if kind == "train":
        from glidre_core.training import load_training_config

        sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        cfg = load_training_config(ROOT / config, sets)  # the overrides are valid config keys
        assert cfg.scaling.use_gpu and cfg.storage.path.startswith("s3://")


def test_configs_load():
    from glidre_core.training import load_training_config

    fine = load_training_config(ROOT / "configs" / "finetune.yaml")
    pre = load_training_config(ROOT / "configs" / "pretrain.yaml")
    assert fine.scaling.num_workers >= 1 and fine.mlflow is not None and fine.mlflow.register_as
    assert pre.pretraining.enabled and pre.pretraining.max_labels_per_batch > pre.pretraining.negatives_per_batch
    assert pre.train.format == "jsonl" and pre.scaling.use_gpu


# -- commands ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("action,args,expected", [
    ("up", [], ["ray", "up", str(AWS), "-y"]),
    ("down", [], ["ray", "down", str(AWS), "-y"]),
    ("status", [], ["ray", "exec", str(AWS), "ray status"]),
    ("dashboard", ["--port", "8266"], ["ray", "dashboard", str(AWS), "--port", "8266"]),
])
def test_cluster_commands_dry_run(action, args, expected):
    res = CliRunner().invoke(main, ["cluster", action, "--config", str(AWS), "--dry-run", *args])
    assert res.exit_code == 0, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("DRY RUN: ")
    assert shlex.split(line[len("DRY RUN: "):]) == expected


def test_cluster_command_refuses_an_invalid_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(AWS.read_text()), "max_workers": "eight"}))
    res = CliRunner().invoke(main, ["cluster", "up", "--config", str(bad), "--dry-run"])
    assert res.exit_code != 0 and "invalid cluster config" in res.output
    ok = CliRunner().invoke(main, ["cluster", "validate", "--config", str(AWS)])
    assert ok.exit_code == 0 and "valid" in ok.output


def _parse_submit(output: str) -> tuple[dict[str, str], list[str]]:
    line = output.strip().splitlines()[-1]
    assert line.startswith("DRY RUN: ")
    words = shlex.split(line[len("DRY RUN: "):])
    env = {}
    while "=" in words[0] and not words[0].startswith("ray"):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return env, words


def test_submit_train_dry_run_builds_the_jobs_api_command(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.delenv("GLIDRE_GIT_COMMIT", raising=False)
    res = CliRunner().invoke(main, [
        "submit", "train", "--config", "configs/finetune.yaml", "--set", "scaling.num_workers=4",
        "--address", "http://head:8265", "--submission-id", "ft-1", "--no-wait", "--env", "FOO=bar",
        "--dry-run", "--", "--run-name", "ft-1",
    ])
    assert res.exit_code == 0, res.output
    env, argv = _parse_submit(res.output)
    assert env == {"RAY_AUTH_MODE": "token"}
    assert argv[:3] == ["ray", "job", "submit"]
    opts = argv[: argv.index("--")]
    assert opts[opts.index("--address") + 1] == "http://head:8265"
    assert opts[opts.index("--working-dir") + 1] == str(ROOT)
    assert opts[opts.index("--submission-id") + 1] == "ft-1" and "--no-wait" in opts
    runtime_env = json.loads(opts[opts.index("--runtime-env-json") + 1])
    assert {".venv", "runs", ".git"} <= set(runtime_env["excludes"])
    env_vars = runtime_env["env_vars"]
    assert env_vars["HF_HUB_OFFLINE"] == "1" and env_vars["FOO"] == "bar"
    assert env_vars["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    if (ROOT / ".git").is_dir():  # the job ships without .git: the commit travels as an env var
        assert len(env_vars["GLIDRE_GIT_COMMIT"]) == 40
    assert argv[argv.index("--") + 1:] == [
        "python", "jobs/train.py", "--config", "configs/finetune.yaml", "--set", "scaling.num_workers=4",
        "--run-name", "ft-1",
    ]


def test_submit_extract_with_a_token_file_and_bad_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    token = tmp_path / "auth_token"
    token.write_text("secret-token")
    res = CliRunner().invoke(main, ["submit", "extract", "--config", "configs/extract.yaml",
                                    "--auth-token-file", str(token), "--dry-run", "--", "--resume"])
    assert res.exit_code == 0, res.output
    env, argv = _parse_submit(res.output)
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    assert "secret-token" not in res.output
    assert argv[argv.index("--") + 1:] == ["python", "jobs/extract.py", "--config", "configs/extract.yaml", "--resume"]

    missing = CliRunner().invoke(main, ["submit", "extract", "--config", "configs/extract.yaml",
                                        "--auth-token-file", str(tmp_path / "nope"), "--dry-run"])
    assert missing.exit_code != 0 and "token file not found" in missing.output
    outside = tmp_path / "x.yaml"
    outside.write_text("{}")
    res = CliRunner().invoke(main, ["submit", "train", "--config", str(outside), "--dry-run"])
    assert res.exit_code != 0 and "outside the working dir" in res.output


def test_command_objects_mask_secrets_and_run_for_real():
    cmd = launcher_command("status", "c.yaml")
    assert cmd.argv == ["ray", "exec", "c.yaml", "ray status"]
    sub = submit_command("train", ROOT / "configs" / "finetune.yaml", working_dir=ROOT, auth_mode="disabled")
    assert sub.env == {"RAY_AUTH_MODE": "disabled"}
    from glidre_core.cluster import Command

    assert "***" in Command(["echo"], {"RAY_AUTH_TOKEN": "abc"}).shell()
    assert Command(["true"]).run() == 0 and Command(["false"]).run() == 1


def test_jobs_train_entry_point_runs_the_library(tmp_path, capsys):
    """jobs/train.py is thin: it parses the config and calls glidre_core.ray_train.train."""
    import importlib.util

    from conftest import tiny_config

    spec = importlib.util.spec_from_file_location("jobs_train", ROOT / "jobs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = {"model": tiny_config().model_dump(mode="json"),
           "train": {"path": str(SHARED_DATA / "redocred" / "dev_revised.json"), "format": "docred", "limit": 4},
           "dev_holdout": 1, "output_dir": str(tmp_path / "out"), "max_steps": 1, "batch_size": 2, "threads": 1}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert module.main(["--config", str(path), "--set", "eval_every=1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["best_dir"], "config.json").exists() and out["mlflow_run_id"] is None

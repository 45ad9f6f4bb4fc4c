"""Cluster and job commands: thin wrappers over Ray's cluster launcher and Jobs CLI.

``glidre cluster up|down|status|dashboard`` runs ``ray up``/``ray down``/``ray exec ... ray
status``/``ray dashboard`` on a cluster YAML; ``glidre submit extract|train`` runs ``ray job
submit`` with the project as working dir, a runtime env (offline Hugging Face, MLflow tracking
URI, git commit) and token auth (Ray >= 2.59 enables token auth: the client needs
``RAY_AUTH_MODE=token`` and the cluster's token). Each function builds a :class:`Command` first,
so ``--dry-run`` prints exactly what would run and tests check it without a cluster.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

logger = logging.getLogger(__name__)

LauncherAction = Literal["up", "down", "status", "dashboard"]
JobKind = Literal["extract", "train"]
JOB_SCRIPTS: dict[str, str] = {"extract": "jobs/extract.py", "train": "jobs/train.py"}
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
#: never uploaded with the working dir (the Jobs API caps a working dir at a few hundred MB)
WORKING_DIR_EXCLUDES = [
    ".git", ".venv", "runs", "mlruns", "mlartifacts", "mlflow.db", "**/__pycache__",
    "*.egg-info", "data/**/*.parquet", ".pytest_cache",
]
#: environment forwarded to jobs when set here
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "GLIDRE_GIT_COMMIT")
SECRET_ENV = ("RAY_AUTH_TOKEN",)


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # set on top of the current environment

    def shell(self) -> str:
        """The command as one shell line; secrets are masked."""
        env = " ".join(f"{k}={'***' if k in SECRET_ENV else shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + shlex.join(self.argv)

    def run(self, dry_run: bool = False) -> int:
        if dry_run:
            return 0
        logger.info("running: %s", self.shell())
        return subprocess.call(self.argv, env={**os.environ, **self.env})


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return data


def validate_launcher_config(path: str | Path) -> dict[str, Any]:
    """Validate a cluster launcher YAML offline against Ray's own schema (private API: Ray is
    pinned). Returns the config with Ray's defaults filled in."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_cluster_config(path)
    if config.get("kind") in ("RayCluster", "RayJob"):
        raise ValueError(f"{path} is a KubeRay manifest, not a cluster launcher YAML (apply it with kubectl)")
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def launcher_command(action: LauncherAction, config: str | Path, *, yes: bool = True,
                     no_config_cache: bool = False, port: int | None = None) -> Command:
    """The ``ray`` command for one cluster launcher action."""
    config = str(config)
    if action == "up":
        argv = ["ray", "up", config] + (["-y"] if yes else []) + (["--no-config-cache"] if no_config_cache else [])
    elif action == "down":
        argv = ["ray", "down", config] + (["-y"] if yes else [])
    elif action == "status":
        argv = ["ray", "exec", config, "ray status"]
    elif action == "dashboard":
        argv = ["ray", "dashboard", config] + (["--port", str(port)] if port else [])
    else:
        raise ValueError(f"unknown cluster action {action!r}")
    return Command(argv)


def runtime_env(
    working_dir: str | Path,
    *,
    extra_env: dict[str, str] | None = None,
    pip: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Runtime env of a job (the working dir itself is passed as ``--working-dir``): excludes of
    heavy paths, offline HF, and the tracking URI / git commit of the submitting machine."""
    env = dict(base or {})
    env.pop("working_dir", None)  # given as --working-dir
    env["excludes"] = sorted(set(env.get("excludes", [])) | set(WORKING_DIR_EXCLUDES))
    env_vars = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key in FORWARDED_ENV:
        if os.environ.get(key):
            env_vars[key] = os.environ[key]
    if "GLIDRE_GIT_COMMIT" not in env_vars:
        from glidre_core.tracking import git_commit

        commit = git_commit(working_dir)
        if commit != "unknown":
            env_vars["GLIDRE_GIT_COMMIT"] = commit  # the job ships code without .git
    env_vars.update(env.get("env_vars", {}))
    env_vars.update(extra_env or {})
    env["env_vars"] = env_vars
    if pip:
        env["pip"] = list(pip)
    return env


def auth_env(mode: Literal["token", "disabled"] = "token", token_file: str | Path | None = None) -> dict[str, str]:
    """Client-side auth for the Jobs API. The token itself comes from ``RAY_AUTH_TOKEN``,
    ``--auth-token-file`` or ``~/.ray/auth_token`` (Ray's own lookup)."""
    env = {"RAY_AUTH_MODE": mode}
    if mode == "token" and token_file:
        path = Path(token_file).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"auth token file not found: {path}")
        env["RAY_AUTH_TOKEN_PATH"] = str(path)
    return env


def submit_command(
    kind: JobKind,
    config: str | Path,
    *,
    address: str = DEFAULT_DASHBOARD,
    working_dir: str | Path = ".",
    overrides: tuple[str, ...] | list[str] = (),
    job_args: tuple[str, ...] | list[str] = (),
    runtime_env_file: str | Path | None = None,
    extra_env: dict[str, str] | None = None,
    submission_id: str | None = None,
    no_wait: bool = False,
    auth_mode: Literal["token", "disabled"] = "token",
    auth_token_file: str | Path | None = None,
    entrypoint_num_cpus: float | None = None,
) -> Command:
    """``ray job submit`` for ``jobs/<kind>.py --config CONFIG [--set ...] [job_args]``."""
    if kind not in JOB_SCRIPTS:
        raise ValueError(f"unknown job {kind!r}; expected one of {', '.join(JOB_SCRIPTS)}")
    working_dir = Path(working_dir).resolve()
    script = JOB_SCRIPTS[kind]
    if not (working_dir / script).exists():
        raise FileNotFoundError(f"{working_dir / script} not found: --working-dir must be the project root")
    config_rel = _relative_to(Path(config), working_dir)
    base = load_cluster_config(runtime_env_file) if runtime_env_file else None
    env = runtime_env(working_dir, extra_env=extra_env, base=base)
    argv = [
        "ray", "job", "submit", "--address", address, "--working-dir", str(working_dir),
        "--runtime-env-json", json.dumps(env, sort_keys=True),
    ]
    if submission_id:
        argv += ["--submission-id", submission_id]
    if no_wait:
        argv.append("--no-wait")
    if entrypoint_num_cpus is not None:
        argv += ["--entrypoint-num-cpus", str(entrypoint_num_cpus)]
    entry = ["python", script, "--config", config_rel]
    for item in overrides:
        entry += ["--set", item]
    entry += list(job_args)
    argv += ["--"] + entry
    return Command(argv, auth_env(auth_mode, auth_token_file))


def _relative_to(path: Path, root: Path) -> str:
    """Config paths travel inside the working dir: they must be given relative to it."""
    if "://" in str(path):
        return str(path)
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        raise ValueError(f"config {path} is outside the working dir {root}: it would not be uploaded") from None

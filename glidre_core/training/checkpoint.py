"""Training checkpoints without pickles: safetensors for tensors, JSON for everything else.

A checkpoint directory (what Ray Train persists, possibly to S3) holds::

    model/                  current weights in float32, GLiDRE.save_pretrained format
    best/                   best-so-far model (save_pretrained, the configured dtype)
    optimizer.safetensors   optimizer state tensors, flattened: ``state.<param idx>.<key>``
    trainer_state.json      step, epoch position, best F1, history, scheduler state,
                            optimizer param groups and non-tensor state
    rank_<r>.json           per-rank RNG state of the python generators (shuffle, label sampler)
    rank_<r>.safetensors    per-rank torch RNG state

Every rank writes its own ``rank_<r>.*`` files; Ray Train merges the workers' directories into
one checkpoint. ``torch.save`` is never used, so loading a checkpoint never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from glidre_core.modeling import GLiDRE
from glidre_core.modeling.persistence import WEIGHTS_NAME

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
BEST_DIR = "best"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
FORMAT_VERSION = 1


def _to_json(obj: Any) -> Any:
    """JSON-able copy that keeps tuples distinguishable (RNG states, Adam betas)."""
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_json(x) for x in obj]}
    if isinstance(obj, list):
        return [_to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        raise TypeError("tensors belong in safetensors, not JSON")
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return tuple(_from_json(x) for x in obj["__tuple__"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(x) for x in obj]
    return obj


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state_dict["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {"param_groups": _to_json(state_dict["param_groups"]), "scalars": _to_json(scalars)}
    return tensors, meta


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in _from_json(meta["scalars"]).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": _from_json(meta["param_groups"])}


@dataclass
class TrainState:
    """Where the loop stands: enough to continue exactly where the checkpoint was taken."""

    step: int
    epoch: int
    batch_offset: int  # index in the epoch's shuffled order of the next batch to run
    best_f1: float
    best_threshold: float
    seen_docs: int
    elapsed_seconds: float
    world_size: int
    history: list[dict[str, Any]] = field(default_factory=list)
    scheduler: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the MLflow run id


@dataclass
class RankState:
    """Per-rank random state (each worker shuffles its own shard and samples its own labels)."""

    epoch_rng: Any  # python Random state at the start of the current epoch (before its shuffle)
    sampler_rng: Any | None
    torch_rng: torch.Tensor
    cuda_rng: torch.Tensor | None = None


def save_model_weights(model: GLiDRE, directory: Path) -> None:
    """Full-precision ``save_pretrained`` copy (resume must not round weights to float16)."""
    original = model.config.save_dtype
    model.config.save_dtype = "float32"
    try:
        model.save_pretrained(directory)
    finally:
        model.config.save_dtype = original


def load_model_weights(model: GLiDRE, directory: Path) -> None:
    """Load a ``save_pretrained`` directory into an existing model (same architecture), strictly."""
    model.load_weights(Path(directory) / WEIGHTS_NAME)


def save_checkpoint(
    directory: str | Path,
    *,
    rank: int,
    model: GLiDRE | None,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState | None,
    rank_state: RankState,
    best_dir: Path | None = None,
) -> Path:
    """Write this rank's part of a checkpoint (rank 0 also writes the shared part)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        if model is None or optimizer is None or state is None:
            raise ValueError("rank 0 writes the model, optimizer and trainer state")
        save_model_weights(model, directory / MODEL_DIR)
        if best_dir is not None and (best_dir / WEIGHTS_NAME).exists():
            shutil.copytree(best_dir, directory / BEST_DIR, dirs_exist_ok=True)
        tensors, opt_meta = flatten_optimizer_state(optimizer.state_dict())
        save_file(tensors, str(directory / OPTIMIZER_FILE), metadata={"format": "pt"})
        payload = {
            "format_version": FORMAT_VERSION,
            "step": state.step, "epoch": state.epoch, "batch_offset": state.batch_offset,
            "best_f1": state.best_f1, "best_threshold": state.best_threshold,
            "seen_docs": state.seen_docs, "elapsed_seconds": state.elapsed_seconds,
            "world_size": state.world_size, "history": state.history,
            "scheduler": _to_json(state.scheduler), "optimizer": opt_meta, "extra": state.extra,
        }
        (directory / STATE_FILE).write_text(json.dumps(payload, indent=1))
    (directory / f"rank_{rank}.json").write_text(json.dumps({
        "epoch_rng": _to_json(rank_state.epoch_rng), "sampler_rng": _to_json(rank_state.sampler_rng),
    }))
    rng = {"torch": rank_state.torch_rng.contiguous()}
    if rank_state.cuda_rng is not None:
        rng["cuda"] = rank_state.cuda_rng.contiguous()
    save_file(rng, str(directory / f"rank_{rank}.safetensors"))
    return directory


def is_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / STATE_FILE).exists()


def load_train_state(directory: str | Path) -> tuple[TrainState, dict[str, Any]]:
    """The shared trainer state and the flattened optimizer state (tensors + meta)."""
    directory = Path(directory)
    payload = json.loads((directory / STATE_FILE).read_text())
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: checkpoint format {payload.get('format_version')} is not {FORMAT_VERSION}")
    state = TrainState(
        step=payload["step"], epoch=payload["epoch"], batch_offset=payload["batch_offset"],
        best_f1=payload["best_f1"], best_threshold=payload["best_threshold"],
        seen_docs=payload["seen_docs"], elapsed_seconds=payload["elapsed_seconds"],
        world_size=payload["world_size"], history=payload["history"],
        scheduler=_from_json(payload["scheduler"]), extra=payload.get("extra") or {},
    )
    optimizer = unflatten_optimizer_state(load_file(str(directory / OPTIMIZER_FILE)), payload["optimizer"])
    return state, optimizer


def load_rank_state(directory: str | Path, rank: int) -> RankState | None:
    """This rank's RNG state, or None when the checkpoint was taken with fewer workers."""
    directory = Path(directory)
    js, st = directory / f"rank_{rank}.json", directory / f"rank_{rank}.safetensors"
    if not (js.exists() and st.exists()):
        return None
    data = json.loads(js.read_text())
    tensors = load_file(str(st))
    return RankState(
        epoch_rng=_from_json(data["epoch_rng"]), sampler_rng=_from_json(data["sampler_rng"]),
        torch_rng=tensors["torch"], cuda_rng=tensors.get("cuda"),
    )

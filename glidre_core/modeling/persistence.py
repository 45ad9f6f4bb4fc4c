"""Saving and loading GLiDRE models: safetensors deltas over pip-installed base encoders.

A saved model is ``config.json`` plus ``model.safetensors`` holding only the tensors that differ
from the named base encoders (so the embedded default model is a 22 MB delta, not a full copy).
Loading is strict and offline: an unexpected, missing or mis-shaped tensor is an error, and the
base encoder's weights file must hash to the value recorded at save time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from glidre_core.config import GLiDREConfig
from glidre_core.pretrained import encoder_fingerprint, resolve_encoder_path, weights_file

if TYPE_CHECKING:
    from glidre_core.modeling.glidre import GLiDRE

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "default_model"


def _base_state(prefix: str, name: str | None) -> dict[str, torch.Tensor] | None:
    if name is None:
        return None
    wf = weights_file(resolve_encoder_path(name))
    if wf is None:
        return None
    base = load_file(str(wf))
    return {prefix + k: v for k, v in base.items()}


def stored_tensors(model: "GLiDRE") -> dict[str, torch.Tensor]:
    """The entries of ``model.state_dict()`` that :func:`save_pretrained` stores: every tensor
    that differs from the named base encoders' weights (heads, trained encoder layers). The
    values share storage with the model's parameters and buffers."""
    base: dict[str, torch.Tensor] = {}
    for prefix, name in (("encoder.model.", model.config.encoder), ("label_encoder.model.", model.config.label_encoder)):
        base.update(_base_state(prefix, name) or {})
    out = {}
    for key, value in model.state_dict().items():
        ref = base.get(key)
        if ref is not None and ref.shape == value.shape and torch.equal(ref.to(value.dtype), value.cpu()):
            continue
        out[key] = value
    return out


@contextmanager
def weights_as_saved(model: "GLiDRE") -> Iterator[None]:
    """Inside this block the model computes what it will compute once saved and reloaded: every
    floating tensor :func:`save_pretrained` stores is rounded to ``config.save_dtype`` in place,
    and restored on exit (training goes on from the full-precision weights).

    Why: the trainer chooses a checkpoint and its threshold by a dev evaluation of the live
    model, and the checkpoint it writes is in float16 by default. The rounding is small, but it
    moves scores, so a score next to the threshold can flip and the recorded dev F1 and threshold were not exactly those of the saved model (benchmarks/llm_loop.sh:
    some 10 of 1,790 dev predictions). Scoring the rounded weights makes them exact.
    (The large gaps once seen between recorded and reloaded dev F1 had another cause: stale
    bf16 head copies, :meth:`GLiDRE.train`.)
    """
    dtype = getattr(torch, model.config.save_dtype)
    kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.no_grad():
        for key, value in stored_tensors(model).items():
            if not value.is_floating_point() or value.dtype == dtype:
                continue
            rounded = value.to(dtype).to(value.dtype)
            if not torch.equal(rounded, value):
                kept[key] = (value, value.clone())
                value.copy_(rounded)
    # memoised label sentence embeddings of a label encoder whose weights change here are stale
    relabel = any(key.startswith("label_encoder.model.") for key in kept)
    if relabel:
        model.label_encoder.clear_cache()
    try:
        yield
    finally:
        with torch.no_grad():
            for value, original in kept.values():
                value.copy_(original)
        if relabel:
            model.label_encoder.clear_cache()


def save_pretrained(model: "GLiDRE", directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` holding only what differs from the bases.

    Encoder weights equal to the pip-installed base encoder are not stored; heads and every
    changed encoder tensor are, in ``config.save_dtype``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config.model_copy(deep=True)
    cfg.encoder_sha256 = encoder_fingerprint(cfg.encoder)
    cfg.label_encoder_sha256 = encoder_fingerprint(cfg.label_encoder)
    dtype = getattr(torch, cfg.save_dtype)
    tensors = {}
    for key, value in stored_tensors(model).items():
        v = value.detach().cpu()
        tensors[key] = (v.to(dtype) if v.is_floating_point() else v).contiguous()
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "glidre": "delta"})
    cfg.save(directory)
    if model.prototypes is not None:  # few-shot labels (glidre adapt) travel with the weights they were built on
        model.prototypes.save(directory)
    logger.info("saved %d tensors to %s", len(tensors), directory)
    return directory


def load_weights(model: "GLiDRE", path: str | Path, allow_missing: tuple[str, ...] = ()) -> None:
    """Load a ``save_pretrained`` weights file strictly: no unexpected tensor, no wrong shape,
    and every tensor not stored must belong to a named (pip/local) base encoder.
    ``allow_missing``: name prefixes that may be absent (a new head a training run adds to a
    saved model); never used when loading a model for use."""
    path = Path(path)
    stored = load_file(str(path))
    own = model.state_dict()
    unexpected = sorted(set(stored) - set(own))
    if unexpected:
        raise ValueError(f"{path}: unexpected tensors {unexpected[:5]}")
    base_ok = set()
    for prefix, name in (("encoder.model.", model.config.encoder), ("label_encoder.model.", model.config.label_encoder)):
        if name is not None:
            base_ok |= {k for k in own if k.startswith(prefix)}
    missing = sorted(
        k for k in own if k not in stored and k not in base_ok and not k.startswith(tuple(allow_missing))
    )
    if missing:
        raise ValueError(f"{path}: missing tensors {missing[:5]}")
    for k, v in stored.items():
        if v.shape != own[k].shape:
            raise ValueError(f"{path}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in stored.items()}, strict=False)


def from_pretrained(cls: type, directory: str | Path, device: str | torch.device = "cpu") -> "GLiDRE":
    """Load strictly and offline: every stored tensor must match, every other must be base."""
    directory = DEFAULT_MODEL_DIR if str(directory) == "default" else Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    cfg = GLiDREConfig.load(directory)
    for name, expected in ((cfg.encoder, cfg.encoder_sha256), (cfg.label_encoder, cfg.label_encoder_sha256)):
        if expected is not None and encoder_fingerprint(name) != expected:
            raise ValueError(
                f"{directory}: base encoder {name!r} differs from the one this model was trained on "
                "(sha256 mismatch); install the pinned package version"
            )
    model = cls(cfg)
    wpath = directory / WEIGHTS_NAME
    if not wpath.exists():
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME}")
    model.load_weights(wpath)
    model.label_encoder.clear_cache()
    from glidre_core.fewshot.prototype import Prototypes, has_prototypes

    if has_prototypes(directory):
        model.prototypes = Prototypes.load(directory, dim=model.dim)
        logger.info("%s: %d few-shot prototype labels %s", directory, len(model.prototypes.labels),
                    model.prototypes.labels)
    model.eval()
    return model.to(device)

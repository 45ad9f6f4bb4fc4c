"""The LLM stage: teacher backends behind one interface, and ``glidre distill``.

* :mod:`~glidre_core.llm.base`: the :class:`LLMBackend` interface and its request/answer types.
* Backends: :mod:`~glidre_core.llm.http` (any OpenAI-compatible server),
  :mod:`~glidre_core.llm.local` (an in-process transformers causal LM),
  :mod:`~glidre_core.llm.ray_llm` (Ray Data's vLLM processor, optional extra ``[llm]``);
  :mod:`~glidre_core.llm.server` serves any backend over the OpenAI API (``glidre llm serve``).
* :mod:`~glidre_core.llm.prompts` (versioned prompts), :mod:`~glidre_core.llm.parsing` (JSON
  repair, validation, mention location), :mod:`~glidre_core.llm.distill` (the Ray Data job),
  :mod:`~glidre_core.llm.config` (typed YAML config; the backend is a discriminated union).

Names load on first use, so that importing the configs does not import torch or Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from glidre_core.lazy import lazy_exports

_EXPORTS = {
    "LLMBackend": "glidre_core.llm.base",
    "GenerationRequest": "glidre_core.llm.base",
    "Completion": "glidre_core.llm.base",
    "Usage": "glidre_core.llm.base",
    "BackendError": "glidre_core.llm.base",
    "DistillConfig": "glidre_core.llm.config",
    "load_distill_config": "glidre_core.llm.config",
    "OpenAIHTTPBackend": "glidre_core.llm.http",
    "TransformersBackend": "glidre_core.llm.local",
    "OpenAIServer": "glidre_core.llm.server",
    "DistillError": "glidre_core.llm.distill",
    "run_distill": "glidre_core.llm.distill",
    "summary_text": "glidre_core.llm.distill",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from glidre_core.llm.base import BackendError, Completion, GenerationRequest, LLMBackend, Usage
    from glidre_core.llm.config import DistillConfig, load_distill_config
    from glidre_core.llm.distill import DistillError, run_distill, summary_text
    from glidre_core.llm.http import OpenAIHTTPBackend
    from glidre_core.llm.local import TransformersBackend
    from glidre_core.llm.server import OpenAIServer

__getattr__ = lazy_exports(__name__, _EXPORTS)

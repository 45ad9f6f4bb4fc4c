"""An LLM relation-extraction baseline in the RHF (relation -> head -> facts) paradigm of
AutoRE (Xue et al., 2024), on documents with *given* entities, scored with GLiDRE's metric.

* :mod:`~glidre_core.llm.rhf.config`: the typed YAML config (``backend`` reuses the backend
  configs of ``glidre distill``); :mod:`~glidre_core.llm.rhf.prompts`: versioned prompts per step.
* :mod:`~glidre_core.llm.rhf.core`: the steps without a backend (requests, answer parsing,
  label and entity-name matching, prediction rows, counts).
* :mod:`~glidre_core.llm.rhf.runner`: batches through a backend, scoring, the CLI entry
  (``glidre evaluate --model llm:CONFIG.yaml``).
"""

from __future__ import annotations

from glidre_core.llm.rhf.config import RHFConfig, RHFError, load_rhf_config
from glidre_core.llm.rhf.prompts import RHF_PROMPTS, STEPS, RHFPrompt, get_rhf_prompt

__all__ = ["RHFConfig", "RHFError", "load_rhf_config", "RHF_PROMPTS", "STEPS", "RHFPrompt", "get_rhf_prompt",
           "evaluate_llm", "run_rhf", "score_run", "summary_text", "RHFBatch"]


def __getattr__(name: str):
    if name in ("evaluate_llm", "run_rhf", "score_run", "summary_text"):
        from glidre_core.llm.rhf import runner

        return getattr(runner, name)
    if name == "RHFBatch":
        from glidre_core.llm.rhf.core import RHFBatch

        return RHFBatch
    raise AttributeError(name)

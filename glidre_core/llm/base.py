"""The one interface every LLM backend implements, and the types that cross it.

Why one batched, synchronous-looking interface: the callers are Ray Data actors (``glidre
distill``, and later verification or feedback stages) that receive a *batch* of documents and
must return a batch of rows. A backend gets every request of a batch at once, so each can batch
its own way: the HTTP client sends them concurrently (asyncio, bounded), the in-process
transformers model pads them into one ``generate`` call, the OpenAI-compatible server groups
concurrent requests into one call. The caller never sees threads, event loops or padding.

Errors are per request, never per batch: a request that fails after its retries comes back as a
:class:`Completion` with ``error`` set (and no text), so one bad document never takes the other
documents of its batch with it. Only a backend that cannot work at all (model missing, endpoint
misconfigured) raises, at construction or on :meth:`LLMBackend.check`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict


class ChatMessage(TypedDict):
    """One OpenAI-style chat message."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt: chat ``messages`` (rendered by the backend: chat template, or plain text for
    base models), with the generation limits of the call. ``request_id`` travels back unchanged
    so results can be matched to documents and chunks."""

    request_id: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int = 512
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    #: ask for a JSON object: OpenAI ``response_format`` over HTTP; the in-process backend stops
    #: generating when the top-level JSON value closes
    json_mode: bool = False
    #: a raw text prompt used verbatim instead of ``messages`` (``/v1/completions``)
    prompt: str | None = None


@dataclass
class Usage:
    """Token accounting of one request (what the server or tokenizer counted, not an estimate)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: "Usage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass
class Completion:
    """The answer to one :class:`GenerationRequest`.

    ``error`` is set (and ``text`` empty) when the request failed after the backend's retries;
    ``attempts`` counts the HTTP attempts (1 for in-process backends); ``finish_reason`` is
    ``stop`` (the model ended), ``length`` (``max_tokens`` reached: the answer is likely cut) or
    ``error``.
    """

    request_id: str
    text: str = ""
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    latency_s: float = 0.0
    attempts: int = 1
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class BackendError(RuntimeError):
    """A backend cannot work at all (bad configuration, model not found, endpoint unreachable
    at start-up). Per-request failures are :attr:`Completion.error` instead."""


class LLMBackend(abc.ABC):
    """Generates text for batches of chat requests.

    Implementations: :class:`~glidre_core.llm.http.OpenAIHTTPBackend` (any OpenAI-compatible
    server: vLLM, TGI, llama.cpp, a hosted API, or ``glidre llm serve``),
    :class:`~glidre_core.llm.local.TransformersBackend` (an in-process causal LM) and, as a Ray
    Data stage rather than an object, :mod:`glidre_core.llm.ray_llm` (vLLM on GPU workers).
    """

    #: a short name for logs and manifests (e.g. ``openai:http://host:8000/v1 model=...``)
    name: str = "llm"

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """One :class:`Completion` per request, in the same order. Never raises for a single
        request's failure (see the module docstring)."""

    def check(self) -> None:
        """Fail fast (raise :class:`BackendError`) when the backend cannot serve at all."""

    def describe(self) -> dict[str, Any]:
        """What to record in a manifest about this backend (never secrets)."""
        return {"name": self.name}

    def close(self) -> None:
        """Release connections or memory (optional)."""

    def __enter__(self) -> "LLMBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def render_plain_prompt(messages: Sequence[ChatMessage]) -> str:
    """Chat messages as plain text, for base models without a chat template and for the
    ``/v1/completions`` endpoint. The layout is fixed so that prompts (and their token counts)
    are reproducible across backends: each message is its role in capitals and its content,
    and the text ends with ``ASSISTANT:`` for the model to continue. A lone user message is a
    completion prompt already (few-shot prompts for base models): it is sent verbatim."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    parts = [f"{m['role'].upper()}:\n{m['content'].strip()}" for m in messages]
    return "\n\n".join(parts) + "\n\nASSISTANT:\n"

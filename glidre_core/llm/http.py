"""The OpenAI-compatible HTTP backend: one client for vLLM's, TGI's and llama.cpp's servers,
hosted APIs, and ``glidre llm serve``.

Decisions:

* **Async, batched, bounded.** :meth:`OpenAIHTTPBackend.generate` sends all requests of a batch
  concurrently on one ``aiohttp`` session and event loop owned by the backend (kept across
  calls, so connections are reused), with at most ``max_concurrency`` in flight per worker.
  Servers such as vLLM batch concurrent requests themselves, so concurrency is what gives them
  throughput. aiohttp is already installed with Ray's dashboard and MLflow: no new dependency.
* **Retries** on what is transient: 408, 409, 429 and 5xx answers, timeouts and connection
  errors, with exponential back-off and jitter, honouring ``Retry-After``. Other 4xx answers
  (bad request, auth, unknown model) are configuration errors: retrying cannot help, so the
  request fails at once (and :meth:`check` catches most of them before the job starts).
* **Rate limits** are client-side token buckets for requests and tokens per minute. A request
  reserves its prompt estimate (characters / 4) plus ``max_tokens`` before it is sent; the
  reservation is corrected with the server's ``usage`` afterwards. Limits given in the config
  are for the whole job; a worker gets ``share`` of them.
* **Timeouts**: ``connect_timeout_s`` to connect, ``timeout_s`` for the whole response.
* **Token accounting**: each :class:`~glidre_core.llm.base.Completion` carries the server's
  ``usage`` (prompt and completion tokens) and the number of attempts; the distill job sums
  them per document.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

from glidre_core.llm.base import (
    BackendError, Completion, GenerationRequest, LLMBackend, Usage, render_plain_prompt,
)
from glidre_core.llm.config import OpenAIBackendConfig

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class TokenBucket:
    """``per_minute`` units per minute, bursting to ten seconds' worth (at least one request's
    worth: an oversized request waits for a full bucket and then goes, leaving a debt)."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * 10)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, amount: float) -> float:
        """Wait until ``amount`` may go; returns the seconds waited."""
        waited = 0.0
        need = min(amount, self.capacity)
        while True:
            self._refill()
            if self.level >= need:
                self.level -= amount
                return waited
            pause = (need - self.level) / self.rate
            await asyncio.sleep(pause)
            waited += pause

    def give_back(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class OpenAIHTTPBackend(LLMBackend):
    """An OpenAI-compatible endpoint (see the module docstring). ``share`` scales the rate
    limits: a job with N workers gives each ``1/N``."""

    def __init__(self, cfg: OpenAIBackendConfig, share: float = 1.0):
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/")
        self.name = f"openai:{self.base_url} model={cfg.model}"
        self._api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self._requests = TokenBucket(cfg.requests_per_minute * share) if cfg.requests_per_minute else None
        self._tokens = TokenBucket(cfg.tokens_per_minute * share) if cfg.tokens_per_minute else None
        self._loop = asyncio.new_event_loop()
        self._session: Any = None
        self.rate_limited_s = 0.0  # seconds spent waiting for the client-side limits

    # -- plumbing -----------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _get_session(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s, sock_connect=self.cfg.connect_timeout_s)
            connector = aiohttp.TCPConnector(limit=self.cfg.max_concurrency)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, headers=self._headers())
        return self._session

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {"name": self.name, "kind": "openai", "base_url": self.base_url, "model": c.model, "api": c.api,
                "max_concurrency": c.max_concurrency, "requests_per_minute": c.requests_per_minute,
                "tokens_per_minute": c.tokens_per_minute, "max_retries": c.max_retries, "timeout_s": c.timeout_s,
                "json_mode": c.json_mode}

    def body(self, r: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """The endpoint path and the JSON body of one request."""
        body: dict[str, Any] = {"model": self.cfg.model, "max_tokens": r.max_tokens, "temperature": r.temperature}
        if r.stop:
            body["stop"] = list(r.stop)
        if self.cfg.json_mode and r.json_mode:
            body["response_format"] = {"type": "json_object"}
        body.update(self.cfg.extra_body)
        if self.cfg.api == "completions" or r.prompt is not None:
            body["prompt"] = r.prompt if r.prompt is not None else render_plain_prompt(r.messages)
            return "/completions", body
        body["messages"] = [dict(m) for m in r.messages]
        return "/chat/completions", body

    # -- one request --------------------------------------------------------------------------
    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.cfg.backoff_max_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * (2 ** attempt))
        return base * (0.5 + random.random() / 2)

    async def _one(self, r: GenerationRequest, gate: asyncio.Semaphore) -> Completion:
        import aiohttp

        path, body = self.body(r)
        reserve = len(body.get("prompt") or "".join(m["content"] for m in body.get("messages", []))) / 4 + r.max_tokens
        t0 = time.perf_counter()
        last_error = "no attempt made"
        attempt = 0
        async with gate:
            while attempt <= self.cfg.max_retries:
                attempt += 1
                if self._requests is not None:
                    self.rate_limited_s += await self._requests.take(1)
                if self._tokens is not None:
                    self.rate_limited_s += await self._tokens.take(reserve)
                retry_after = None
                try:
                    session = await self._get_session()
                    async with session.post(self.base_url + path, json=body) as resp:
                        text = await resp.text()
                        if resp.status == 200:
                            completion = self._parse(r, text, path)
                            completion.attempts = attempt
                            completion.latency_s = time.perf_counter() - t0
                            if self._tokens is not None:
                                self._tokens.give_back(reserve - completion.usage.total_tokens)
                            return completion
                        last_error = f"HTTP {resp.status}: {text[:300]}"
                        if resp.status not in RETRY_STATUS:
                            break
                        retry_after = resp.headers.get("Retry-After")
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                except ValueError as exc:  # a 200 whose body is not an OpenAI answer: not transient
                    last_error = f"bad response: {exc}"
                    break
                if attempt <= self.cfg.max_retries:
                    pause = self._backoff(attempt - 1, retry_after)
                    logger.debug("request %s: %s; retry %d in %.2fs", r.request_id, last_error, attempt, pause)
                    await asyncio.sleep(pause)
        logger.warning("request %s failed after %d attempt(s): %s", r.request_id, attempt, last_error)
        return Completion(r.request_id, finish_reason="error", latency_s=time.perf_counter() - t0,
                          attempts=attempt, error=last_error)

    @staticmethod
    def _parse(r: GenerationRequest, text: str, path: str) -> Completion:
        import json

        try:
            data = json.loads(text)
            choice = data["choices"][0]
            content = choice["text"] if path == "/completions" else choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"not an OpenAI {path} response ({type(exc).__name__}: {exc}): {text[:200]}") from None
        usage = data.get("usage") or {}
        return Completion(r.request_id, text=content or "",
                          usage=Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
                          finish_reason=choice.get("finish_reason") or "stop")

    # -- the interface ------------------------------------------------------------------------
    async def _generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        gate = asyncio.Semaphore(self.cfg.max_concurrency)
        return list(await asyncio.gather(*(self._one(r, gate) for r in requests)))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        if not requests:
            return []
        return self._loop.run_until_complete(self._generate(requests))

    def check(self) -> None:
        """``GET /models``: fails on an unreachable server or a rejected key; warns (only) when
        the server does not list the configured model, since some servers alias names."""
        self._loop.run_until_complete(self._check())

    async def _check(self) -> None:
        import aiohttp

        try:
            session = await self._get_session()
            async with session.get(self.base_url + "/models") as resp:
                text = await resp.text()
                if resp.status in (401, 403):
                    raise BackendError(f"{self.base_url}: the server refused the API key (HTTP {resp.status}; "
                                       f"key from ${self.cfg.api_key_env or '<none>'})")
                if resp.status != 200:
                    logger.warning("%s/models answered HTTP %d; going on", self.base_url, resp.status)
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise BackendError(f"cannot reach the LLM endpoint {self.base_url}: {type(exc).__name__}: {exc}") from exc
        import json

        try:
            ids = [m.get("id") for m in json.loads(text).get("data", [])]
        except (ValueError, AttributeError):
            return
        if ids and self.cfg.model not in ids:
            logger.warning("%s serves %s, not the configured model %r", self.base_url, ids, self.cfg.model)

    def close(self) -> None:
        if self._session is not None and not self._session.closed:
            self._loop.run_until_complete(self._session.close())
        if not self._loop.is_closed():
            self._loop.close()

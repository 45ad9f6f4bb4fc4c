"""A small, real OpenAI-compatible server over any :class:`~glidre_core.llm.base.LLMBackend`
(``glidre llm serve --model gemma-3-270m``).

Why it exists: the HTTP backend must be tested against a real server over a real socket, with
a real model behind it, and none of the usual servers installs here. ``llama-cpp-python``
publishes only a source distribution on PyPI (``pip download --only-binary=:all:`` finds
nothing), so every fresh machine, CI's included, would compile llama.cpp on 2 cores; the one
llama.cpp package with a CPU wheel (``llama-cpp-py-sync``) is a binding without a server; vLLM
and TGI need GPUs. This server puts the in-process transformers backend behind the standard
endpoints, so the client code that talks to vLLM in production is the code under test here.

Endpoints (standard OpenAI JSON; ``stream`` and ``n > 1`` are refused with 400):

* ``POST /v1/chat/completions``: ``messages`` through the backend (its chat template, or the
  plain layout for base models); ``response_format: {"type": "json_object"}`` makes the
  in-process backend stop when the JSON object closes.
* ``POST /v1/completions``: a plain ``prompt``, used verbatim.
* ``GET /v1/models``, ``GET /health``.

Every answer carries ``usage`` (prompt, completion and total tokens, counted by the model's
tokenizer). Concurrent requests are grouped into one backend call (up to ``max_batch``,
waiting at most ``batch_wait_s`` for company), as vLLM's scheduler does on a larger scale. When
``max_queue`` requests already wait, new ones get ``429`` with ``Retry-After``: back-pressure
that the HTTP client's retries handle.

Built on the standard library's threading HTTP server: no web framework to install, and a
client thread per connection is plenty for a test or a single-user server.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from glidre_core.llm.base import Completion, GenerationRequest, LLMBackend

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the server refuses: ``status`` and an OpenAI error ``type``/``code``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def parse_request(path: str, data: Any, served_model: str, max_tokens_limit: int) -> GenerationRequest:
    """An OpenAI request body -> :class:`GenerationRequest`, or :class:`RequestError` naming the field."""
    if not isinstance(data, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = data.get("model")
    if model != served_model:
        raise RequestError(404, f"the model {model!r} does not exist; this server serves {served_model!r}",
                           code="model_not_found", param="model")
    if data.get("stream"):
        raise RequestError(400, "stream=true is not supported by this server", param="stream")
    if int(data.get("n") or 1) != 1:
        raise RequestError(400, "only n=1 is supported", param="n")
    max_tokens = data.get("max_tokens", data.get("max_completion_tokens", 256))
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= max_tokens_limit:
        raise RequestError(400, f"max_tokens must be an integer in [1, {max_tokens_limit}]", param="max_tokens")
    temperature = data.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise RequestError(400, "temperature must be a number >= 0", param="temperature")
    stop = data.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    fmt = data.get("response_format") or {}
    json_mode = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
    rid = uuid.uuid4().hex
    if path == "/v1/completions":
        prompt = data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError(400, "prompt must be a string", param="prompt")
        return GenerationRequest(rid, (), max_tokens, float(temperature), stop, json_mode, prompt=prompt)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise RequestError(400, f"messages[{i}] needs a role (system, user, assistant) and a string content",
                               param=f"messages[{i}]")
    msgs = tuple({"role": m["role"], "content": m["content"]} for m in messages)
    return GenerationRequest(rid, msgs, max_tokens, float(temperature), stop, json_mode)  # type: ignore[arg-type]


def response_body(path: str, model: str, c: Completion) -> dict[str, Any]:
    """The OpenAI JSON answer for one completion."""
    created = int(time.time())
    usage = c.usage.as_dict()
    if path == "/v1/completions":
        return {"id": f"cmpl-{c.request_id}", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}],
                "usage": usage}
    return {"id": f"chatcmpl-{c.request_id}", "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason}],
            "usage": usage}


class _QuietHTTPServer(ThreadingHTTPServer):
    """A client that went away (its timeout) is routine for a server: log it, no traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            logger.info("client %s went away before its answer was sent", client_address[0])
        else:
            logger.exception("error while serving %s", client_address[0])


class OpenAIServer:
    """The server (see the module docstring). Use as a context manager, or :meth:`start` /
    :meth:`stop`; :meth:`serve_forever` blocks (the CLI)."""

    def __init__(self, backend: LLMBackend, model_name: str, host: str = "127.0.0.1", port: int = 8000, *,
                 max_batch: int = 8, batch_wait_s: float = 0.02, max_queue: int = 256,
                 max_tokens_limit: int = 4096, request_timeout_s: float = 600.0):
        self.backend = backend
        self.model_name = model_name
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self.max_tokens_limit = max_tokens_limit
        self.request_timeout_s = request_timeout_s
        self._queue: queue.Queue[tuple[GenerationRequest, Future[Completion]]] = queue.Queue()
        self._stop = threading.Event()
        self.stats = {"requests": 0, "rejected_busy": 0, "batches": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._httpd = _QuietHTTPServer((host, port), self._handler_class())
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The OpenAI base URL (``http://host:port/v1``)."""
        return f"http://{self._httpd.server_address[0]}:{self.port}/v1"

    # -- batching worker ------------------------------------------------------------------------
    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            self.stats["batches"] += 1
            try:
                results = self.backend.generate([r for r, _ in batch])
            except Exception as exc:  # noqa: BLE001 - answer every waiting request, keep serving
                logger.exception("backend failed on a batch of %d", len(batch))
                results = [Completion(r.request_id, finish_reason="error", error=f"{type(exc).__name__}: {exc}")
                           for r, _ in batch]
            for (_, fut), res in zip(batch, results):
                fut.set_result(res)

    def submit(self, request: GenerationRequest) -> Completion:
        """Queue one request and wait for its completion (raises :class:`RequestError` 429 when full)."""
        if self._queue.qsize() >= self.max_queue:
            self.stats["rejected_busy"] += 1
            raise RequestError(429, f"server busy: {self._queue.qsize()} requests waiting", "rate_limit_error")
        fut: Future[Completion] = Future()
        self._queue.put((request, fut))
        return fut.result(timeout=self.request_timeout_s)

    # -- HTTP -----------------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections

            def log_message(self, fmt: str, *args: Any) -> None:
                logger.debug("%s %s", self.address_string(), fmt % args)

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": server.model_name, "object": "model", "created": 0, "owned_by": "glidre"}]})
                elif self.path.rstrip("/") == "/health":
                    self._send(200, {"status": "ok"})
                else:
                    self._send(404, RequestError(404, f"no route {self.path}").body())

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.rstrip("/")
                try:
                    if path not in ("/v1/chat/completions", "/v1/completions"):
                        raise RequestError(404, f"no route {self.path}")
                    length = int(self.headers.get("Content-Length") or 0)
                    try:
                        data = json.loads(self.rfile.read(length) or b"null")
                    except ValueError:
                        raise RequestError(400, "the request body is not JSON") from None
                    request = parse_request(path, data, server.model_name, server.max_tokens_limit)
                    server.stats["requests"] += 1
                    completion = server.submit(request)
                    if completion.error:
                        raise RequestError(500, f"generation failed: {completion.error}", "server_error")
                    server.stats["prompt_tokens"] += completion.usage.prompt_tokens
                    server.stats["completion_tokens"] += completion.usage.completion_tokens
                    self._send(200, response_body(path, server.model_name, completion))
                except RequestError as exc:
                    self._send(exc.status, exc.body(), {"Retry-After": "1"} if exc.status == 429 else None)

        return Handler

    def start(self) -> "OpenAIServer":
        for target, name in ((self._worker, "llm-batcher"), (self._httpd.serve_forever, "llm-http")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        logger.info("serving %s (%s) at %s", self.model_name, getattr(self.backend, "name", "?"), self.url)
        return self

    def serve_forever(self) -> None:
        """Serve until interrupted (Ctrl-C / SIGTERM)."""
        self.start()
        try:
            while True:
                time.sleep(3600)
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=10)

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

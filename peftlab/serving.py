"""The model server behind python -m peftlab.serve: one base model in memory with any number of trained adapters of
it (artifacts.add_adapter), answering over HTTP with the code predict uses (inference.predict_texts,
causal_lm.generate).

- POST /v1/predict {"adapter": NAME, "inputs": [...]} -> {"predictions": [...]}: the records predict prints, for
  every task; question answering inputs are {"question", "context"} objects. Concurrent requests are batched
  (peftlab/batching.py).
- POST /v1/completions and /v1/chat/completions: OpenAI's shapes for causal LMs ("model" names the adapter; chat
  renders the messages with the tokenizer's chat template as training did); "stream": true sends server-sent events.
- GET /health; GET /metrics in Prometheus' text format.

Why FastAPI + uvicorn: pydantic checks request bodies (fields, types, ranges) into messages that name the field,
streaming responses and an in-process test client come with it, and uvicorn is the server FastAPI documents; both
are pure-Python wheels in the optional `serve` extra, so training installs need neither.
Why prometheus_client rather than writing the format by hand: it gets the exposition format (label escaping,
cumulative histogram buckets, _sum/_count) right, has no dependencies, and its parser reads the text back in tests."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from . import chat, inference, levers
from .artifacts import Trained, add_adapter, load_any
from .batching import Batcher
from .errors import PeftlabError, check
from .tasks import causal_lm

DEFAULT = "default"  # the served run's own adapter (peft's name for the first one)
ENDPOINTS = ("/v1/predict", "/v1/completions", "/v1/chat/completions")
log = logging.getLogger("peftlab.serve")


class ApiError(Exception):
    """A request the server refuses: its HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_inputs: int = 64  # inputs per /v1/predict request
    max_body_bytes: int = 1 << 20


def load_adapters(source: Path, extra: dict[str, Path]) -> dict[str, Trained]:
    """The run (or export) as DEFAULT and the extra runs' adapters beside it on the same base."""
    check(DEFAULT not in extra, f"--adapter {DEFAULT}=...: '{DEFAULT}' names the served run itself; pick another name")
    trained = load_any(source)
    adapters = {DEFAULT: trained} | {name: add_adapter(trained, name, path) for name, path in extra.items()}
    levers.release_freed_memory()  # what loading freed goes back to the system, not into the server's resident set
    return adapters


MIXABLE_TASKS = ("classification", "regression", "token_classification")  # one model row per input
# the layers whose trained copies (modules_to_save: heads, LayerNorms) peft's mixed batches can route per row
MIXABLE_SAVED = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def saved_modules_mix(model) -> bool:
    """Every fully trained module (peft's ModulesToSaveWrapper) is of a kind a mixed batch can route. Checked up
    front, not tried: peft raises for others (a LayerNorm) inside its forward hooks and then leaves the hooks in place,
    so every later call of the model would fail too."""
    from peft.utils.other import ModulesToSaveWrapper

    return all(isinstance(m.original_module, MIXABLE_SAVED) for m in model.modules()
               if isinstance(m, ModulesToSaveWrapper))


def mixable(adapters: dict[str, Trained]) -> bool:
    """Whether requests for different adapters can share one model call (peft's mixed adapter batches): plain LoRA
    adapters (peft mixes no other kind, nor DoRA) whose fully trained modules can be routed per row, of a task whose
    predict runs one model row per input, with the same labels and input settings, so that the rows' outputs read
    alike."""
    views = list(adapters.values())
    if len(views) < 2 or getattr(views[0].model, "peft_type", None) != "LORA":
        return False
    configs = views[0].model.peft_config
    first = views[0].recipe
    return (first.model.task in MIXABLE_TASKS and not any(c.use_dora for c in configs.values())
            and saved_modules_mix(views[0].model)
            and all(v.labels == views[0].labels and (v.recipe.data.max_length, v.recipe.data.label_scale)
                    == (first.data.max_length, first.data.label_scale) for v in views))


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = registry = CollectorRegistry()  # one per server: tests build several
        labels = ("endpoint", "adapter")
        self.requests = Counter("peftlab_requests", "Requests answered", labels, registry=registry)
        self.errors = Counter("peftlab_errors", "Requests answered with an error", labels + ("status",),
                              registry=registry)
        self.latency = Histogram("peftlab_request_seconds", "Request to last byte of the reply", labels,
                                 registry=registry)
        self.tokens = Counter("peftlab_generated_tokens", "Tokens generated", ("adapter",), registry=registry)
        self.batch = Histogram("peftlab_batch_rows", "Inputs per model call of /v1/predict", ("adapter",),
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=registry)
        self.queued = Histogram("peftlab_queue_seconds", "Time a /v1/predict request waited for its batch",
                                ("adapter",), registry=registry)

    def request(self, endpoint: str, adapter: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, adapter).inc()
        self.latency.labels(endpoint, adapter).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint, adapter, str(status)).inc()

    def batched(self, adapter: str, rows: int, waits: list[float]) -> None:
        self.batch.labels(adapter).observe(rows)
        for wait in waits:
            self.queued.labels(adapter).observe(wait)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def until_stop(text: str, stop: list[str], held: bool = False) -> tuple[str, bool]:
    """The text before the first stop string, and whether there was one (OpenAI's replies leave it out). held: the
    text is still coming, so an end that may be the start of a stop string is held back too."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    if cuts:
        return text[:min(cuts)], True
    keep = len(text) - max((len(s) - 1 for s in stop), default=0) if held else len(text)
    return text[:max(keep, 0)], False


def as_api_error(err: Exception) -> ApiError:
    """What a request is told of a failure: the problem for a bad request, no traceback for a server fault."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, PeftlabError):
        return ApiError(400, str(err))
    log.error("internal error", exc_info=err)
    return ApiError(500, f"internal error ({type(err).__name__}); the server log has the details")


# ------------------------------------------------------------------------------------------ request bodies

class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str = DEFAULT
    inputs: list[Any]


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send more (top_p, user, ...): not used
    model: str = DEFAULT
    max_tokens: int | None = Field(None, ge=1)  # default: the recipe's data.max_new_tokens
    temperature: float = Field(0.0, ge=0, le=2)  # 0: greedy, as predict (OpenAI's default is 1)
    stop: str | list[str] | None = None
    stream: bool = False


class CompletionRequest(GenerationRequest):
    prompt: str = Field(min_length=1)  # used as it is: the caller formats it


class ChatRequest(GenerationRequest):
    messages: list[dict] = Field(min_length=1)


@dataclass
class Reply:
    """OpenAI's reply shapes: a completion or a chat completion, whole or as stream chunks."""

    chat: bool
    model: str
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, text: str, finish: str | None, usage: dict | None = None, chunk: bool = False) -> dict:
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
            choice = {"delta" if chunk else "message": {"role": "assistant", "content": text}}
        else:
            kind, choice = "text_completion", {"text": text, "logprobs": None}
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": [{"index": 0, **choice, "finish_reason": finish}]} | ({"usage": usage} if usage else {})


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


# ------------------------------------------------------------------------------------------ the server

class Server:
    def __init__(self, adapters: dict[str, Trained], max_batch: int = 16, window_s: float = 0.005,
                 limits: Limits = Limits()):
        self.adapters, self.limits, self.metrics = adapters, limits, Metrics()
        self.batcher = Batcher(self._predict, max_batch, window_s, self.metrics.batched, mixed=mixable(adapters))

    def adapter(self, name: str, request: Request, causal: bool | None = None) -> Trained:
        view = self.adapters.get(name)
        if view is None:
            raise ApiError(404, f"unknown adapter {name!r}; this server has {', '.join(map(repr, self.adapters))}")
        request.state.adapter = name
        task = view.recipe.model.task
        if causal is not None and causal != (task == "causal_lm"):
            raise ApiError(400, f"adapter {name!r} is a {task} model: " + (
                "completions are for causal_lm models; use /v1/predict" if causal else "use /v1/predict"))
        return view

    async def wait(self, future):
        try:
            return await asyncio.wrap_future(future)
        except Exception as err:
            raise as_api_error(err) from None

    def _use(self, name: str) -> Trained:
        """The adapter's view, its adapter made the active one (worker thread only)."""
        view = self.adapters[name]
        if len(self.adapters) > 1 and view.model.active_adapter != name:
            view.model.set_adapter(name)
        return view

    # -------------------------------------------------------------- /v1/predict

    def rows(self, view: Trained, inputs: list) -> list:
        """Checked before queueing: the inputs' count and shape."""
        if not inputs:
            raise ApiError(400, "inputs: give at least one input")
        if len(inputs) > self.limits.max_inputs:
            raise ApiError(413, f"inputs: {len(inputs)} inputs, over the limit of {self.limits.max_inputs} per "
                                "request; send them in several requests")
        qa = view.recipe.model.task == "qa"
        for i, row in enumerate(inputs):
            ok = (isinstance(row, dict) and set(row) == {"question", "context"} and all(
                isinstance(v, str) and v.strip() for v in row.values())) if qa else isinstance(row, str) and row.strip()
            if not ok:
                raise ApiError(400, f"inputs[{i}]: " + ('give {"question": "...", "context": "..."} with non-empty texts'
                                                         if qa else "give a non-empty text (a sentence pair: the two "
                                                                    "texts separated by a TAB)"))
        return inputs

    def _predict(self, adapter: str | tuple, rows: list) -> list[dict]:
        """One batch (worker thread): the records predict prints. `adapter`: the batch's adapter, or for a mixed
        batch the adapter of each row (the adapters then share task, labels and max_length: mixable)."""
        names = [adapter] * len(rows) if isinstance(adapter, str) else list(adapter)
        view = self._use(names[0])
        qa = view.recipe.model.task == "qa"
        texts = [row["question"] if qa else row for row in rows]
        limit = view.recipe.data.max_length
        for i, (text, name) in enumerate(zip(texts, names)):
            tokens = len(view.tokenizer(*text.split("\t", 1))["input_ids"])
            if tokens > limit:  # predict would cut it silently
                raise ApiError(400, f"inputs[{i}]: {tokens} tokens, over the limit of {limit} of adapter {name!r} "
                                    "(the data.max_length it was trained with); shorten it")
        return inference.predict_texts(view, texts, adapter_names=None if isinstance(adapter, str) else names,
                                       context=[row["context"] for row in rows] if qa else None)

    # -------------------------------------------------------------- completions

    def _prompt(self, view: Trained, prompt_of, max_tokens: int) -> tuple[str, int]:
        """The prompt text and its length in tokens, checked against the model's positions (worker thread)."""
        prompt = prompt_of(view)
        tokens = len(view.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        room = getattr(view.model.config, "max_position_embeddings", None)
        if room and tokens + max_tokens > room:
            raise ApiError(400, f"prompt: {tokens} tokens + max_tokens {max_tokens} exceed the model's {room} "
                                "positions; shorten the prompt or lower max_tokens")
        return prompt, tokens

    def _generate(self, name: str, prompt: str, max_tokens: int, temperature: float, stop: list[str],
                  streamer=None) -> tuple[str, str, int]:
        """(text, finish_reason, tokens generated) for one prompt (worker thread)."""
        view = self._use(name)
        try:
            texts, generated = causal_lm.generate(view.model, view.tokenizer, [prompt], max_tokens, 1, temperature,
                                                  stop, streamer)
        except BaseException:
            if streamer is not None:
                streamer.end()  # the stream's reader stops waiting
            raise
        self.metrics.tokens.labels(name).inc(generated)
        text, stopped = until_stop(texts[0], stop)
        return text, "stop" if stopped or generated < max_tokens else "length", generated

    async def complete(self, request: Request, body: GenerationRequest, prompt_of, reply: Reply):
        view = self.adapter(body.model, request, causal=True)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        max_tokens = body.max_tokens or view.recipe.data.max_new_tokens
        prompt, prompt_tokens = await self.wait(self.batcher.call(body.model, partial(self._prompt, view, prompt_of,
                                                                                      max_tokens)))
        run = partial(self._generate, body.model, prompt, max_tokens, body.temperature, stop)
        if not body.stream:
            text, finish, tokens = await self.wait(self.batcher.call(body.model, run))
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                     "total_tokens": prompt_tokens + tokens}
            return reply.body(text, finish, usage)
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(view.tokenizer, skip_prompt=True, skip_special_tokens=True)
        future = self.batcher.call(body.model, partial(run, streamer=streamer))
        return StreamingResponse(self._events(streamer, future, stop, reply, request.state),
                                 media_type="text/event-stream")

    def _events(self, streamer, future, stop: list[str], reply: Reply, state):
        """Server-sent events as the tokens come (iterated in a thread by Starlette), then the finish reason and
        [DONE]; an error after the stream began comes as an event with an "error" field."""
        text, sent = "", 0
        for piece in streamer:
            text += piece
            visible, stopped = until_stop(text, stop, held=True)
            if len(visible) > sent:
                yield sse(reply.body(visible[sent:], None, chunk=True))
                sent = len(visible)
            if stopped:
                break
        try:
            final, finish, _ = future.result()
        except Exception as err:
            failure = as_api_error(err)
            state.failed = failure.status  # the reply began 200: the metrics count the failure
            yield sse({"error": str(failure)})
        else:
            yield sse(reply.body(final[sent:], finish, chunk=True))
        yield sse("[DONE]")


# ------------------------------------------------------------------------------------------ the app

class Gate:
    """Around the app, as plain ASGI (so a streamed reply is timed to its last byte): the API key and the body size
    before it, the request metrics after it."""

    def __init__(self, app, server: Server, api_key: str | None):
        self.app, self.server, self.api_key = app, server, api_key

    def refusal(self, scope) -> tuple[int, str] | None:
        headers = Headers(scope=scope)
        given = headers.get("authorization", "").encode()
        if self.api_key and scope["path"] != "/health" and not hmac.compare_digest(given,
                                                                                   f"Bearer {self.api_key}".encode()):
            return 401, "missing or wrong API key; send the header Authorization: Bearer <key>"
        if scope["method"] == "POST":
            length, limit = headers.get("content-length"), self.server.limits.max_body_bytes
            if length is None:
                return 411, "no Content-Length; send the body with its length, not chunked"
            if int(length) > limit:
                return 413, f"body of {length} bytes, over the limit of {limit}; send fewer inputs per request"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, state = time.perf_counter(), [500], scope.setdefault("state", {})

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        refusal = self.refusal(scope)
        try:
            app = JSONResponse({"error": refusal[1]}, refusal[0]) if refusal else self.app
            await app(scope, receive, sending)
        finally:
            if scope["path"] in ENDPOINTS:
                self.server.metrics.request(scope["path"], state.get("adapter", "-"), state.get("failed", status[0]),
                                            time.perf_counter() - started)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0]
    if first["type"] == "json_invalid":
        return _error(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})")
    where = ".".join(map(str, first["loc"][1:])) or "body"
    return _error(400, f"{where}: {first['msg']}")


def create_app(adapters: dict[str, Trained], api_key: str | None = None, max_batch: int = 16,
               batch_window_ms: float = 5, limits: Limits = Limits()) -> FastAPI:
    server = Server(adapters, max_batch, batch_window_ms / 1000, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.batcher.close()

    app = FastAPI(title="peftlab", lifespan=lifespan)
    app.state.server = server
    app.add_middleware(Gate, server=server, api_key=api_key)
    app.add_exception_handler(ApiError, lambda request, err: _error(err.status, str(err)))
    app.add_exception_handler(PeftlabError, lambda request, err: _error(400, str(err)))
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, lambda request, err: _error(err.status_code, f"{err.detail}: "
                                                                                          f"{request.url.path}"))
    app.add_exception_handler(Exception, lambda request, err: _error(500, str(as_api_error(err))))

    @app.get("/health")
    def health():
        return {"status": "ok", "adapters": {name: {"task": v.recipe.model.task, "method": v.recipe.method.kind,
                                                    "run": str(v.run_dir)} for name, v in adapters.items()}}

    @app.get("/metrics")
    def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(server.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/predict")
    async def predict(body: PredictRequest, request: Request):
        view = server.adapter(body.adapter, request)
        rows = server.rows(view, body.inputs)
        return {"predictions": await server.wait(server.batcher.predict_rows(body.adapter, rows))}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await server.complete(request, body, lambda view: body.prompt, Reply(False, body.model))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        turns = [chat.checked_turn(turn, f"messages[{i}]", i) for i, turn in enumerate(body.messages)]
        return await server.complete(request, body, lambda view: chat.generation_prompt(view.tokenizer, turns),
                                     Reply(True, body.model))

    return app

"""An OpenAI-compatible endpoint on the device: `relayllm local` serves this app on 127.0.0.1.

    app = create_app(LocalService(decoder, model="smollm2"))   # FastAPI; uvicorn serves it
    # POST /v1/chat/completions, POST /v1/completions, GET /v1/models; SSE when stream=true

Any OpenAI client works (base_url="http://127.0.0.1:P/v1"). Extensions, ignored by clients
that do not know them: every streamed delta (and completion choice) carries `author`
("slm": written on the device, "llm": written by the cloud); the usage carries slm_tokens,
llm_tokens, calls, degraded, degraded_reasons, local_only, prompt_evaluated_tokens; a
non-streamed message carries `spans`. A request may choose its routing with
`"relay_mode": "relay" | "confidence" | "r2r" | "citer" | "local-only"` (openai client:
extra_body). Requests are served one at a time (one llama.cpp context); a client that
disconnects stops decoding and cancels the cloud call. Errors have OpenAI's error body.
Not here: decoding (edge/decoder.py) and the command line (edge/local_cli.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from relayllm.edge.aio import astream
from relayllm.edge.config import Limits, Sampling
from relayllm.edge.events import Result, TextPiece

MODES = ("relay", "confidence", "r2r", "citer", "local-only")
_FINISH = {"eos": "stop", "length": "length", "context": "length", "cancelled": "stop"}


class ApiError(Exception):
    """An error for the HTTP client, with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class LocalService:
    """What the endpoint serves: one decoder, its routers by mode, the default mode, the key.

    routers: mode -> router for the modes that use one ("confidence", "r2r", "citer");
    "relay" uses the decoder's own, "local-only" sends nothing."""

    decoder: object
    model: str = "relayllm-local"
    mode: str = "relay"
    routers: dict = field(default_factory=dict)
    api_key: str | None = None
    max_tokens: int = 256
    mode_note: str | None = None  # why the default mode is what it is (edge/local_cli.py, choose_mode)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.lock = asyncio.Lock()  # one request at a time: one llama.cpp context

    def options(self, body: dict) -> dict:
        """The decoder options of one request: routing mode, limits, sampling."""
        mode = body.get("relay_mode") or self.mode
        if mode not in MODES:
            raise ApiError(400, f"relay_mode must be one of {', '.join(MODES)}, got {mode!r}", param="relay_mode")
        options: dict = {"local_only": mode == "local-only"}
        if mode in ("confidence", "r2r", "citer"):
            if mode not in self.routers:
                raise ApiError(400, f"relay_mode {mode!r} is not set up on this server (see relayllm local --help)",
                               param="relay_mode")
            options["router"] = self.routers[mode]
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or self.max_tokens
        d = self.decoder
        try:
            options["limits"] = Limits(max_calls=d.limits.max_calls, max_llm_tokens=d.limits.max_llm_tokens,
                                       max_total_tokens=int(max_tokens))
            options["sampling"] = Sampling(
                temperature=float(body.get("temperature", d.sampling.temperature)),
                top_p=float(body.get("top_p", d.sampling.top_p)), top_k=int(body.get("top_k", d.sampling.top_k)),
                seed=int(body.get("seed") or 0) % (1 << 32))
        except (TypeError, ValueError) as exc:
            raise ApiError(400, str(exc)) from None
        return options


def _usage(result: Result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.total_tokens,
            "total_tokens": result.prompt_tokens + result.total_tokens, "slm_tokens": result.slm_tokens,
            "llm_tokens": result.llm_tokens, "calls": result.calls, "degraded": result.degraded,
            "degraded_reasons": result.degraded_reasons, "local_only": result.local_only,
            "prompt_evaluated_tokens": result.prompt_evaluated_tokens}


def _sse(payload) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"


def create_app(service: LocalService):
    """The FastAPI app (see the module doc)."""
    app = FastAPI(title="relayllm local", version="1")
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request, exc):
        return JSONResponse(ApiError(400, f"bad request body: {exc.errors()[:3]}").body(), status_code=400)

    def check_key(request: Request) -> None:
        if service.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {service.api_key}".encode()):
            raise ApiError(401, "invalid API key: send Authorization: Bearer <key>", code="invalid_api_key")

    async def body_of(request: Request) -> dict:
        check_key(request)
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [{"id": service.model, "object": "model", "created": 0,
                                            "owned_by": "relayllm"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await body_of(request)
        options = service.options(body)
        try:
            decode = service.decoder.request(messages=body.get("messages"), **options)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        return await respond(request, decode, body, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await body_of(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "prompt must be a non-empty string", param="prompt")
        options = service.options(body)
        try:
            decode = service.decoder.request(prompt, **options)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="prompt") from None
        return await respond(request, decode, body, chat=False)

    async def respond(request: Request, decode, body: dict, *, chat: bool):
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            async with service.lock, _watching(request, decode):
                result = await _run(decode)
            choice = {"index": 0, "finish_reason": _FINISH.get(result.finish_reason, "stop")}
            spans = [{"author": a, "text": t} for a, t in result.spans]
            if chat:
                choice["message"] = {"role": "assistant", "content": result.text, "spans": spans}
            else:
                choice.update(text=result.text, spans=spans, logprobs=None)
            return {"id": ident, "object": kind, "created": created, "model": service.model, "choices": [choice],
                    "usage": _usage(result)}

        def chunk(choice: dict, **extra) -> dict:
            return {"id": ident, "object": kind + (".chunk" if chat else ""), "created": created,
                    "model": service.model, "choices": [choice], **extra}

        async def events():
            # 1) One request at a time; 2) a chunk per text piece, named by its author;
            # 3) the last chunk carries finish_reason and the usage; 4) [DONE].
            # A client that goes away cancels this task: astream's exit cancels the decoder.
            async with service.lock, _watching(request, decode):
                first = True
                stream = astream(decode)
                try:
                    async for event in stream:
                        if isinstance(event, TextPiece):
                            if chat:
                                delta = {"content": event.text, "author": event.author}
                                if first:
                                    delta["role"] = "assistant"
                                choice = {"index": 0, "delta": delta, "finish_reason": None}
                            else:
                                choice = {"index": 0, "text": event.text, "author": event.author,
                                          "finish_reason": None, "logprobs": None}
                            first = False
                            yield _sse(chunk(choice))
                        elif isinstance(event, Result):
                            end = {"index": 0, "finish_reason": _FINISH.get(event.finish_reason, "stop")}
                            end.update({"delta": {}} if chat else {"text": "", "logprobs": None})
                            yield _sse(chunk(end, usage=_usage(event)))
                finally:
                    await stream.aclose()
            yield _sse(b"[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


@contextlib.asynccontextmanager
async def _watching(request, decode, every_s: float = 0.1):
    """While decoding: a client that goes away cancels the request (decoder and cloud call).
    Sending alone would notice only at the next chunk, and a cloud call may be hanging."""

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(every_s)
        decode.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


async def _run(decode) -> Result:
    result = None
    async for event in astream(decode):
        result = event
    return result


class LocalServerThread:
    """The endpoint served by uvicorn in a background thread (tests, benchmarks, the desktop
    example): `with LocalServerThread(service) as server: server.base_url`."""

    def __init__(self, service: LocalService, *, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.config = uvicorn.Config(create_app(service), host=host, port=port, log_level="warning",
                                     lifespan="off")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="relayllm-local", daemon=True)

    def __enter__(self) -> "LocalServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local endpoint did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)

"""The gateway backend: the relay service in front of an OpenAI-compatible /v1/completions
engine (vLLM, SGLang, llama.cpp's llama-server, llama-cpp-python's llama_cpp.server).

Devices still speak the relay protocol and send deltas over the WAN; the gateway keeps each
session's whole token list (Session.kv_tokens) and sends the engine the whole prompt on the
LAN, where the engine's own prefix cache reuses the KV (vLLM automatic prefix caching,
SGLang's radix cache, llama-server's slots). The engine batches sessions itself
(continuous batching), so the gateway is also the batching path.

Per call (`generate`):
1. prompt: token ids when the engine takes them (vLLM, SGLang, llama-server); text made
   from the ids with the shared tokenizer otherwise (llama_cpp.server takes only text).
   `prompt_format="auto"` asks the engine once at start-up (a 1-token probe);
2. max_tokens = N, temperature / top_p / top_k / seed and no other filter (the engines'
   own defaults, e.g. repeat_penalty 1.1, are turned off), stream=True; `cache_salt` = the
   tenant where the engine supports it (vLLM: tenants never share prefix-cache entries;
   llama-server has no such field, so the gateway refuses to salt in front of it);
3. token ids back where the engine offers them: `return_token_ids` (vLLM, SGLang:
   choices[].token_ids); llama-server (found by its /props at start-up) is called on its own
   /completion endpoint, whose stream carries `tokens` with `return_tokens` (its /v1 stream
   does not) and whose last chunk says how many prompt tokens came from its cache
   (timings.cache_n, reported as reused). FALLBACK, documented: each streamed text chunk is
   tokenized again with the shared tokenizer (no BOS) - the text is exact, the ids may
   differ from the engine's own split when a chunk boundary falls inside a word;
4. cancellation: when the client cancels or the deadline passes, the HTTP stream is closed,
   which the engines take as an abort of the request (llama-server frees the slot).
Engine failures become gRPC statuses (400/422 INVALID_ARGUMENT with the engine's message,
429 RESOURCE_EXHAUSTED, anything else UNAVAILABLE). Usage counts what the gateway sent as
new against what the session held, unless the engine says what its prefix cache reused.

The engine's tokenizer must be given (a GGUF file; only its vocabulary is loaded), so that
token mode and the fingerprint work and the limits count real tokens.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

import grpc
import httpx

from relayllm.cloud.backends.base import FINISH_EOS, FINISH_LENGTH, Backend, SamplingParams, Usage, timed
from relayllm.cloud.backends.llamacpp import GgufTokenizer, LlamaModelFile
from relayllm.cloud.planning import Refused
from relayllm.cloud.sessions import Session, SessionCache
from relayllm.protos.delta import common_prefix

log = logging.getLogger("relayllm.cloud.gateway")


class OpenAIGatewayBackend(GgufTokenizer, Backend):
    name = "openai-gateway"

    def __init__(self, upstream_url: str, *, model: str, tokenizer, n_ctx: int = 4096, max_sessions: int = 1024,
                 prompt_format: str = "auto", salt_tenants: bool = False, api_key: str | None = None,
                 timeout_s: float = 600.0):
        if tokenizer is None:
            raise ValueError("the gateway needs the engine's tokenizer: a GGUF file of the same model (--tokenizer)")
        if prompt_format not in ("auto", "tokens", "text"):
            raise ValueError(f"prompt_format must be auto, tokens or text, got {prompt_format!r}")
        self.file = LlamaModelFile(tokenizer, vocab_only=True)
        self.url = upstream_url.rstrip("/")
        self.root = self.url.removesuffix("/v1")  # where llama-server's own endpoints live
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0))
        self.model_name = model
        self.fingerprint = self.file.fingerprint
        self.n_vocab = self.file.n_vocab
        self.n_ctx = min(n_ctx, self._engine_context() or n_ctx)
        self.sessions = SessionCache(max_sessions)  # a session costs a token list here, not KV
        # llama-server: its own /completion streams token ids and what its cache reused
        self.llama_server = prompt_format != "text" and self._is_llama_server()
        if salt_tenants and self.llama_server:
            raise ValueError("llama-server has no cache_salt: tenants would share its slots' prompt cache; drop "
                             "--cache-salt, run one llama-server per tenant, or use an engine that salts (vLLM)")
        self.salt_tenants = salt_tenants
        self.prompt_as_tokens = self.llama_server or prompt_format == "tokens" or (
            prompt_format == "auto" and self._takes_token_ids())
        log.info("gateway to %s: prompts as %s%s", self.url, "token ids" if self.prompt_as_tokens else "text",
                 " on llama-server's /completion" if self.llama_server else "")

    def _engine_context(self) -> int | None:
        """The engine's context length when /models says it (vLLM: max_model_len)."""
        try:
            models = self.http.get("/models").json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        for entry in models:
            if entry.get("id") == self.model_name and isinstance(entry.get("max_model_len"), int):
                return entry["max_model_len"]
        return None

    def _is_llama_server(self) -> bool:
        """llama-server answers GET /props with its slots (vLLM, SGLang, llama_cpp.server: 404)."""
        try:
            props = self.http.get(f"{self.root}/props").json()
        except (httpx.HTTPError, ValueError):
            return False
        return isinstance(props, dict) and "total_slots" in props and "default_generation_settings" in props

    def _takes_token_ids(self) -> bool:
        """Does the engine accept a prompt of token ids? (one request of one token)"""
        probe = {"model": self.model_name, "prompt": self.file.tokenize(b"Hi")[-1:], "max_tokens": 1}
        try:
            reply = self.http.post("/completions", json=probe)
        except httpx.HTTPError as err:
            raise OSError(f"cannot reach the engine at {self.url}: {err}") from None
        return reply.status_code == 200

    def _prompt(self, tokens: list[int]):
        if self.prompt_as_tokens:
            return list(tokens)
        bos = self.file.bos()
        body = tokens[1:] if bos is not None and tokens and tokens[0] == bos else tokens  # the engine adds its BOS
        return b"".join(self.file.token_bytes(t) for t in body).decode("utf-8", "replace")

    # -- the gateway keeps the tokens; the engine keeps the KV ------------------------------
    def prefill(self, session: Session, tokens: list[int]) -> Usage:
        reused = common_prefix(session.kv_tokens, tokens)
        session.kv_tokens, session.logits_ready = list(tokens), False
        return Usage(prefilled_tokens=len(tokens) - reused, reused_tokens=reused)

    def _request(self, session: Session, tokens: list[int], max_new_tokens: int, sampling: SamplingParams) -> dict:
        if self.llama_server:  # its own /completion: tokens in the stream, its cache figures at the end
            body = {"prompt": list(tokens), "n_predict": max_new_tokens, "stream": True, "return_tokens": True,
                    "cache_prompt": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
                    "top_k": sampling.top_k, "min_p": 0.0, "repeat_penalty": 1.0}
            if sampling.seed:
                body["seed"] = sampling.seed
            return body
        body = {"model": self.model_name, "prompt": self._prompt(tokens), "max_tokens": max_new_tokens,
                "stream": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
                # the relay's sampling has no other filters: turn off the engines' own defaults
                # (llama.cpp servers default to repeat_penalty 1.1, top_k 40, min_p 0.05)
                "top_k": sampling.top_k, "min_p": 0.0, "repeat_penalty": 1.0, "repetition_penalty": 1.0,
                "return_token_ids": True}  # vLLM / SGLang: choices[].token_ids
        if sampling.seed:
            body["seed"] = sampling.seed
        if self.salt_tenants:
            body["cache_salt"] = f"tenant:{session.key[0]}"
        return body

    def _ids(self, chunk: dict, choice: dict) -> list[int]:
        ids = choice.get("token_ids") or chunk.get("tokens")
        text = choice.get("text") or chunk.get("content") or ""
        if isinstance(ids, list) and all(isinstance(i, int) for i in ids) and (
                "content" not in chunk or b"".join(self.file.token_bytes(i) for i in ids) == text.encode()):
            return ids
        # llama-server holds back a token that ends inside a UTF-8 character and never streams
        # its id (the next chunk's text carries its bytes): that chunk falls back as well
        # the fallback: the text again through the shared tokenizer
        return self.file.model.tokenize(text.encode("utf-8"), add_bos=False, special=True) if text else []

    @staticmethod
    def _refusal(response: httpx.Response) -> Refused:
        try:
            detail = json.loads(response.text)
            detail = detail.get("error", detail).get("message", response.text) if isinstance(detail, dict) else detail
        except ValueError:
            detail = response.text
        detail = f"the engine refused the request ({response.status_code}): {str(detail)[:300]}"
        if response.status_code in (400, 413, 422):
            return Refused(grpc.StatusCode.INVALID_ARGUMENT, detail)
        if response.status_code == 429:
            return Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, detail)
        return Refused(grpc.StatusCode.UNAVAILABLE, detail)

    def generate(self, session: Session, tokens: list[int], *, max_new_tokens: int,
                 sampling: SamplingParams, should_stop: Callable[[], str | None],
                 emit: Callable[[int], None]) -> tuple[str, list[int], Usage]:
        usage = self.prefill(session, tokens)
        elapsed = timed()
        generated: list[int] = []
        finish = FINISH_LENGTH
        ended = False  # [DONE] seen, or stopped here: a stream that just stops is the engine's failure
        try:
            # leaving this block closes the HTTP stream: that is how a stop reaches the engine
            with self.http.stream("POST", f"{self.root}/completion" if self.llama_server else "/completions",
                                  json=self._request(session, tokens, max_new_tokens, sampling)) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._refusal(response)
                for line in response.iter_lines():
                    stop = should_stop()
                    if stop:
                        finish, ended = stop, True
                        break
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        ended = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise Refused(grpc.StatusCode.UNAVAILABLE, f"the engine failed mid-stream: {chunk['error']}")
                    for choice in chunk.get("choices") or [{}]:
                        ids = [t for t in self._ids(chunk, choice) if not self.is_eos(t)]  # llama-server sends EOS
                        for token in ids[: max_new_tokens - len(generated)]:
                            emit(token)
                            generated.append(token)
                        if choice.get("finish_reason"):
                            finish = FINISH_EOS if choice["finish_reason"] == "stop" else FINISH_LENGTH
                    timings = chunk.get("timings")  # llama-server, last chunk: what its prompt cache reused
                    if isinstance(timings, dict) and isinstance(timings.get("cache_n"), int):
                        usage.reused_tokens, usage.prefilled_tokens = timings["cache_n"], timings.get("prompt_n", 0)
                    if chunk.get("stop") is True:  # llama-server's /completion ends with this chunk, no [DONE]
                        finish = FINISH_EOS if chunk.get("stop_type") in ("eos", "word") else FINISH_LENGTH
                        ended = True
                        break
            if not ended:  # llama_cpp.server ends a stream silently when the prompt is too long
                raise Refused(grpc.StatusCode.UNAVAILABLE, "the engine ended the stream without finishing "
                              "(is the prompt over its context length? set the gateway's n_ctx to the engine's)")
        except httpx.HTTPError as err:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"the engine at {self.url} failed: {err}") from None
        finally:
            session.kv_tokens = list(tokens) + generated
        usage.generated_tokens = len(generated)
        usage.generate_s = elapsed()
        return finish, generated, usage

    def close(self) -> None:
        self.http.close()
        self.file.close()

"""Real OpenAI-compatible engines on loopback, each a subprocess serving a GGUF, for the
gateway's tests and benchmarks:

- `Engine`: llama-cpp-python's own server (`python -m llama_cpp.server`, the
  llama-cpp-python[server] dependencies). One request at a time, text prompts only.
- `LlamaServer`: llama.cpp's own `llama-server` binary (built by .ci/setup from the pinned
  llama-cpp-python's vendored llama.cpp; `llama_server_binary()` finds it), with continuous
  batching over `parallel` slots and token-id prompts.

    engine = LlamaServer(gguf, n_ctx=1024, parallel=4)   # waits until /v1/models answers
    engine.complete("The capital of France is", 4)
    engine.stop()

Reference engines, not servers to deploy (see docs/cloud.md for vLLM).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server_binary() -> Path | None:
    """The llama-server binary: $RELAYLLM_LLAMA_SERVER, else the one .ci/setup put beside
    this Python (.venv/bin/llama-server), else the build cache, else PATH; None if none."""
    if os.environ.get("RELAYLLM_LLAMA_SERVER"):
        return Path(os.environ["RELAYLLM_LLAMA_SERVER"])
    candidates = [Path(sys.executable).parent / "llama-server"]
    try:
        from importlib.metadata import version

        candidates.append(Path(os.environ.get("RELAYLLM_BIN_CACHE", Path.home() / ".cache/relayllm/bin"))
                          / f"llama-server-{version('llama-cpp-python')}")
    except Exception:  # noqa: BLE001 - no llama-cpp-python: only the other places
        pass
    found = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
    return found or (Path(shutil.which("llama-server")) if shutil.which("llama-server") else None)


class _Subprocess:
    """An engine subprocess on a free loopback port, its log in a temporary file."""

    name = "engine"

    def __init__(self, argv: list[str], *, port: int, alias: str):
        self.port, self.alias = port, alias
        self.root = f"http://127.0.0.1:{port}"
        self.url = f"{self.root}/v1"
        # a file, not a pipe: a chatty engine would block on a full pipe nobody reads
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{self.url}/models", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not start: {self.log_tail()}")
                time.sleep(0.2)

    def log_tail(self, chars: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read()[-chars:]

    # greedy with no other filter, as the relay asks for it (the llama.cpp servers' own
    # defaults would add repeat_penalty 1.1, top_k 40, min_p 0.05)
    GREEDY = {"temperature": 0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}

    def complete(self, prompt, max_tokens: int, **kw) -> dict:
        reply = httpx.post(f"{self.url}/completions", timeout=120, json={
            "model": self.alias, "prompt": prompt, "max_tokens": max_tokens, **self.GREEDY, **kw})
        reply.raise_for_status()
        return reply.json()

    def stream(self, prompt, max_tokens: int) -> str:
        """The same completion streamed (as the gateway asks for it); returns its text."""
        text = []
        with httpx.stream("POST", f"{self.url}/completions", timeout=120, json={
                "model": self.alias, "prompt": prompt, "max_tokens": max_tokens, "stream": True, **self.GREEDY}) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    text.append(httpx.Response(200, content=line[5:]).json()["choices"][0]["text"])
        return "".join(text)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Engine(_Subprocess):
    """llama-cpp-python's server: one request at a time, a one-prompt cache, text prompts."""

    name = "llama_cpp.server"

    def __init__(self, gguf, *, n_ctx: int = 1024, alias: str = "smollm2"):
        port = free_port()
        super().__init__([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port),
                          "--n_ctx", str(n_ctx), "--n_threads", "1", "--model_alias", alias, "--verbose", "false"],
                         port=port, alias=alias)


class LlamaServer(_Subprocess):
    """llama.cpp's llama-server: `parallel` slots decoded together (continuous batching),
    `n_ctx` tokens per slot, prompts cached per slot, /slots and /metrics served."""

    name = "llama-server"

    def __init__(self, gguf, *, n_ctx: int = 1024, parallel: int = 4, threads: int = 1, alias: str = "smollm2",
                 binary: Path | None = None):
        binary = binary or llama_server_binary()
        if binary is None:
            raise FileNotFoundError("no llama-server binary: run .ci/setup (it builds one) "
                                    "or set RELAYLLM_LLAMA_SERVER")
        port = free_port()
        self.parallel = parallel
        super().__init__([str(binary), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                          "--ctx-size", str(n_ctx * parallel), "--parallel", str(parallel), "--threads", str(threads),
                          "--threads-batch", str(threads), "--alias", alias, "--slots", "--metrics"],
                         port=port, alias=alias)

    def slots(self) -> list[dict]:
        return httpx.get(f"{self.root}/slots", timeout=10).json()

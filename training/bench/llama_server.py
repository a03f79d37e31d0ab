"""A real OpenAI-compatible engine on loopback: llama-cpp-python's own server
(`python -m llama_cpp.server`, the llama-cpp-python[server] dependencies) serving a GGUF in a
subprocess, for the gateway's tests and benchmarks.

    engine = Engine(gguf, n_ctx=1024)   # waits until /v1/models answers
    engine.complete("The capital of France is", 4)
    engine.stop()

It serves one request at a time (no continuous batching): a reference engine, not a server
to deploy (see docs/cloud.md for vLLM).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    def __init__(self, gguf, *, n_ctx: int = 1024, alias: str = "smollm2"):
        self.port = free_port()
        self.alias = alias
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(self.port),
             "--n_ctx", str(n_ctx), "--n_threads", "1", "--model_alias", alias, "--verbose", "false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{self.url}/models", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("llama_cpp.server did not start: " + (self.process.stderr.read() or ""))
                time.sleep(0.2)

    def complete(self, prompt: str, max_tokens: int, **kw) -> dict:
        reply = httpx.post(f"{self.url}/completions", timeout=120, json={
            "model": self.alias, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **kw})
        reply.raise_for_status()
        return reply.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

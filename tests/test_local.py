"""`relayllm local`: the OpenAI-compatible endpoint on the device, against a real cloud on loopback.

The official openai client (streaming and not) and a raw HTTP client (httpx) for the
extension fields: authors per chunk, the relay usage, routing per request, the API key,
client disconnects, bad requests.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import pytest

from edge_parts import HangingRelay, counting_cloud

QUESTION = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def cloud(smollm2_path):
    server, backend = counting_cloud(smollm2_path)
    with server:
        yield server, backend


@pytest.fixture(scope="module")
def endpoint(smollm2_path, cloud):
    from relayllm.edge import RelayDecoder, load_slm
    from relayllm.edge.client import CloudClient
    from relayllm.edge.routers import ConfidenceRouter
    from relayllm.edge.server import LocalServerThread, LocalService

    client = CloudClient(cloud[0].target)
    decoder = RelayDecoder(load_slm(smollm2_path, n_ctx=1024), cloud=client)
    # confidence 0.6: SmolLM2 is unsure often enough that the cloud writes a good share
    service = LocalService(decoder, model="smollm2", mode="confidence", max_tokens=24,
                           routers={"confidence": ConfidenceRouter(0.6, run=4)}, api_key="sesame")
    with LocalServerThread(service) as server:
        yield server
    client.close()


def _openai(endpoint, key="sesame"):
    import openai

    return openai.OpenAI(base_url=endpoint.base_url, api_key=key, max_retries=0)


def test_openai_client_chat_not_streamed_names_the_authors(endpoint):
    reply = _openai(endpoint).chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=24,
                                                      temperature=0)
    message = reply.choices[0].message
    usage = reply.usage.model_dump()
    assert message.content and usage["completion_tokens"] == usage["slm_tokens"] + usage["llm_tokens"] <= 24
    assert usage["llm_tokens"] > 0 and usage["calls"] > 0 and not usage["degraded"] and not usage["local_only"]
    spans = message.model_extra["spans"]
    assert "".join(s["text"] for s in spans) == message.content
    assert {s["author"] for s in spans} == {"slm", "llm"}


def test_openai_client_streams_with_authors_and_usage(endpoint):
    stream = _openai(endpoint).chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=24,
                                                       temperature=0, stream=True)
    pieces, usage, finish = [], None, None
    for chunk in stream:
        choice = chunk.choices[0]
        if choice.delta.content:
            pieces.append((choice.delta.model_extra["author"], choice.delta.content))
        finish = choice.finish_reason or finish
        if getattr(chunk, "usage", None) is not None:
            usage = chunk.usage.model_dump()
    assert pieces and {a for a, _ in pieces} == {"slm", "llm"}
    assert finish in ("stop", "length") and usage is not None
    assert usage["llm_tokens"] > 0 and usage["calls"] > 0
    assert usage["completion_tokens"] == usage["slm_tokens"] + usage["llm_tokens"]


def _sse(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_raw_http_stream_extension_fields_and_completions(endpoint):
    headers = {"Authorization": "Bearer sesame"}
    with httpx.stream("POST", endpoint.base_url + "/chat/completions", headers=headers, timeout=60,
                      json={"messages": QUESTION, "max_tokens": 16, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = _sse(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text_chunks = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert all(c["choices"][0]["delta"]["author"] in ("slm", "llm") for c in text_chunks)
    usage = chunks[-1]["usage"]
    assert set(usage) >= {"slm_tokens", "llm_tokens", "calls", "degraded", "degraded_reasons", "local_only"}
    assert sum(1 for c in text_chunks if c["choices"][0]["delta"]["author"] == "llm") > 0

    # /v1/completions, streamed: each chunk names its author too
    with httpx.stream("POST", endpoint.base_url + "/completions", headers=headers, timeout=60,
                      json={"prompt": "The sea is", "max_tokens": 12, "stream": True}) as response:
        events = _sse(response)
    texts = [c["choices"][0] for c in events[:-1] if c["choices"][0].get("text")]
    assert texts and all(t["author"] in ("slm", "llm") for t in texts)
    whole = _openai(endpoint).completions.create(model="smollm2", prompt="The sea is", max_tokens=12)
    assert whole.choices[0].text and whole.usage.model_dump()["slm_tokens"] + whole.usage.model_dump()[
        "llm_tokens"] == whole.usage.completion_tokens
    models = _openai(endpoint).models.list()
    assert [m.id for m in models.data] == ["smollm2"]


def test_local_only_per_request_sends_nothing(endpoint, cloud):
    _, backend = cloud
    before = (backend.prefills, backend.generations)
    reply = _openai(endpoint).chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16,
                                                      extra_body={"relay_mode": "local-only"})
    usage = reply.usage.model_dump()
    assert usage["local_only"] and usage["llm_tokens"] == 0 and usage["calls"] == 0
    assert (backend.prefills, backend.generations) == before  # the cloud saw nothing


def test_api_key_and_bad_requests_get_openai_error_bodies(endpoint):
    import openai

    with pytest.raises(openai.AuthenticationError):
        _openai(endpoint, key="wrong").chat.completions.create(model="smollm2", messages=QUESTION)
    no_key = httpx.get(endpoint.base_url + "/models")
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    headers = {"Authorization": "Bearer sesame"}
    for body, word in (({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
                       ({"messages": QUESTION, "relay_mode": "psychic"}, "relay_mode"),
                       ({"messages": QUESTION, "relay_mode": "r2r"}, "not set up"),
                       ({"messages": QUESTION, "temperature": 9}, "temperature"),
                       ({"messages": [{"role": "user", "content": "word " * 2000}]}, "context holds")):
        bad = httpx.post(endpoint.base_url + "/chat/completions", headers=headers, json=body, timeout=60)
        assert bad.status_code == 400 and word in bad.json()["error"]["message"], bad.text
    not_json = httpx.post(endpoint.base_url + "/chat/completions", headers=headers, content=b"{", timeout=10)
    assert not_json.status_code == 400 and "error" in not_json.json()


def test_requests_at_once_are_served_one_after_the_other(endpoint):
    import concurrent.futures

    client = _openai(endpoint)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda _: client.chat.completions.create(
            model="smollm2", messages=QUESTION, max_tokens=8, extra_body={"relay_mode": "local-only"}), range(3)))
    assert all(r.choices[0].message.content for r in replies)


def test_client_disconnect_stops_decoding_and_cancels_the_cloud_call(smollm2_path):
    from relayllm.edge import RelayDecoder, load_slm
    from relayllm.edge.client import CloudClient
    from relayllm.edge.routers import AlwaysLLMRouter
    from relayllm.edge.server import LocalServerThread, LocalService
    from relayllm.protos.fingerprint import tokenizer_fingerprint

    slm = load_slm(smollm2_path, n_ctx=512)
    hang = HangingRelay(tokenizer_fingerprint(slm))
    client = CloudClient(hang.target, deadline_s=60)
    decoder = RelayDecoder(slm, cloud=client, deadline_s=60)
    service = LocalService(decoder, mode="confidence", routers={"confidence": AlwaysLLMRouter(4)}, max_tokens=16)
    try:
        with LocalServerThread(service) as server:
            with httpx.stream("POST", server.base_url + "/chat/completions", timeout=60,
                              json={"messages": QUESTION, "stream": True}) as response:
                assert response.status_code == 200
                assert hang.started.wait(20)  # the cloud call is in flight (and hangs)
            gone = time.monotonic()
            assert hang.cancelled.wait(10), "the cloud call was not cancelled"
            assert time.monotonic() - gone < 10  # not the 60 s deadline
            after = httpx.post(server.base_url + "/chat/completions", timeout=60,
                               json={"messages": QUESTION, "max_tokens": 4, "relay_mode": "local-only"})
            assert after.status_code == 200  # the decoder was freed
    finally:
        client.close()
        hang.close()


def test_relayllm_local_command_serves_and_checks_flags(smollm2_path, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = [sys.executable, "-c", "import sys; from relayllm.protos.cli import main; sys.exit(main())", "local"]
    proc = subprocess.Popen(run + ["--port", str(port), "--model", str(smollm2_path), "--local-only"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                                   json={"messages": QUESTION, "max_tokens": 4})
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
                time.sleep(0.3)
        assert reply.status_code == 200 and reply.json()["usage"]["local_only"]
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run(run + ["--mode", "r2r", "--model", str(smollm2_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--r2r-router" in bad.stderr


# --------------------------------------------------------------------------------------------
# What `relayllm local` sets for itself, and says: the mode for its SLM, OpenMP's waiting

_START = r"""
import os, sys, json
os.environ.pop("OMP_WAIT_POLICY", None)
seen = []

class Hook:  # OMP_WAIT_POLICY as llama_cpp is first imported (libgomp reads it when it loads)
    def find_spec(self, name, path=None, target=None):
        if name == "llama_cpp" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None

sys.meta_path.insert(0, Hook())
import uvicorn
uvicorn.run = lambda app, **kw: print("SERVING", flush=True)  # start-up only, no server
from relayllm.protos.cli import main
code = main(["local", *sys.argv[1:]])
print(json.dumps({"code": code, "omp_at_llama_import": seen}))
"""


def _start_local(*flags):
    proc = subprocess.run([sys.executable, "-c", _START, *flags], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout, proc.stderr


def test_local_picks_a_mode_that_calls_with_an_slm_that_cannot_write_a_command(smollm2_path):
    """SmolLM2 has no `<call>` token: in relay mode it would never call the cloud. With a cloud and
    no --mode the endpoint serves the confidence router and says why; --mode relay is kept, with
    a warning. OpenMP's idle threads sleep (OMP_WAIT_POLICY=passive) before llama.cpp loads."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        cloud = f"127.0.0.1:{s.getsockname()[1]}"  # nothing needs to answer: the start-up does not call
    result, out, err = _start_local("--model", str(smollm2_path), "--cloud", cloud)
    assert result == {"code": 0, "omp_at_llama_import": ["passive"]}
    assert "mode confidence" in out and "OMP_WAIT_POLICY=passive" in out and "SERVING" in out
    assert "no `<call>` token" in err and "default mode is confidence" in err

    result, out, err = _start_local("--model", str(smollm2_path), "--cloud", cloud, "--mode", "relay")
    assert result["code"] == 0 and "mode relay" in out
    assert "warning: this SLM has no `<call>` token" in err and "never calls the cloud" in err

    result, out, err = _start_local("--model", str(smollm2_path))  # no cloud: nothing to call, no note
    assert result["code"] == 0 and "mode relay" in out and "<call>" not in err


def test_choose_mode_for_every_slm_and_cloud():
    from relayllm.edge.local_cli import choose_mode

    assert choose_mode(None, writes_commands=True, has_cloud=True) == ("relay", None)
    assert choose_mode(None, writes_commands=False, has_cloud=False) == ("relay", None)
    mode, note = choose_mode(None, writes_commands=False, has_cloud=True)
    assert mode == "confidence" and "no `<call>` token" in note
    mode, note = choose_mode("relay", writes_commands=False, has_cloud=True)
    assert mode == "relay" and note.startswith("warning:")
    for asked in ("confidence", "r2r", "citer", "local-only"):
        assert choose_mode(asked, writes_commands=False, has_cloud=True) == (asked, None)
    assert choose_mode("relay", writes_commands=True, has_cloud=True) == ("relay", None)


def test_openmp_env_keeps_what_the_environment_says():
    from relayllm.edge.local_cli import openmp_env

    env = {}
    assert openmp_env(env) == {"OMP_WAIT_POLICY": "passive"} == env
    env = {"OMP_WAIT_POLICY": "active"}
    assert openmp_env(env) == {"OMP_WAIT_POLICY": "active"}

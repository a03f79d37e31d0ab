"""Learned per-token routers on the device (R2R and CITER modes), run with onnxruntime.

A token router is asked once for every token the SLM is about to write (the
`RelayDecoder(router=...)` hook): it reads signals llama.cpp already produced for that
position -- no extra forward pass -- and says whether the LLM should write the token.

Features for the position being decoded (`FeatureSpec` says which ones a router uses):
- the SLM's top-k next-token probabilities (sorted) and the entropy of its distribution,
  computed from the logits the decode step returned;
- the SLM's last hidden state (the final-norm output that the LM head reads). llama.cpp
  hands it out together with the logits when the context is created with
  `embedding=True` (pooling NONE): `llama_get_embeddings_ith(ctx, -1)` after the same
  decode call that produced the logits. The decode cost is unchanged; the one price is that
  llama.cpp then marks every prompt token as an output during prefill;
- the candidate token's input embedding. The router's ONNX file carries the SLM's token
  embedding table and looks the candidate up itself (a Gather), so the device needs no
  GGUF parser and the table is exactly the one the router was trained with.

The ONNX graph: inputs `dense` (float32 [B, D]: top-k, entropy, hidden state) and `token`
(int64 [B]); output `p_llm` (float32 [B]): the probability that the LLM should write this
token. The router fires when p_llm >= threshold. The file's metadata holds the FeatureSpec
(JSON) and the mode. The same `dense_features` function computes the features in training
(from the HF model's logits and hidden states), so the edge and the trainer cannot drift.

Only numpy and onnxruntime here: routers run on the device.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SPEC_KEY = "relayllm.feature_spec"
MODE_KEY = "relayllm.router_mode"


class RouterError(ValueError):
    """A router file or setting that cannot be used (the message says why)."""


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a router reads. `hidden_size` is the SLM's, needed when `hidden_state`."""

    top_k: int = 8
    hidden_state: bool = True
    token_embedding: bool = True
    hidden_size: int = 0

    @property
    def dense_size(self) -> int:
        return self.top_k + 1 + (self.hidden_size if self.hidden_state else 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        return cls(**json.loads(text))


def probability_features(logits, top_k: int) -> np.ndarray:
    """[..., V] logits -> [..., top_k + 1]: the top-k softmax probabilities (descending) and the entropy (nats)."""
    z = np.asarray(logits, dtype=np.float32)
    if z.ndim > 1:
        return np.stack([probability_features(row, top_k) for row in z.reshape(-1, z.shape[-1])]).reshape(
            z.shape[:-1] + (top_k + 1,))
    z = z - z.max()
    e = np.exp(z)
    total = e.sum()
    p = e / total
    # entropy = -sum p log p, with log p = z - log(total): no log(0) for tiny probabilities.
    entropy = -float((p * (z - np.log(total))).sum())
    # Top-k among the tokens within 20 nats of the best (a partition over the whole
    # vocabulary costs more than the rest of the router); those left out have p < 3e-9
    # and count as 0.
    near = p[z >= -20.0]
    k = min(top_k, near.size)
    top = np.sort(np.partition(near, near.size - k)[near.size - k:])[::-1]
    out = np.zeros(top_k + 1, dtype=np.float32)
    out[:k] = top
    out[top_k] = entropy
    return out


def dense_features(spec: FeatureSpec, logits, hidden=None) -> np.ndarray:
    """The router's dense input for one position ([V] logits) or many ([T, V] logits, [T, d] hidden)."""
    parts = [probability_features(logits, spec.top_k)]
    if spec.hidden_state:
        if hidden is None:
            raise RouterError("this router reads the SLM's hidden state: load the SLM with embedding=True")
        h = np.asarray(hidden, dtype=np.float32)
        if h.shape[-1] != spec.hidden_size:
            raise RouterError(f"hidden state has size {h.shape[-1]}, the router was trained on {spec.hidden_size}")
        parts.append(h)
    return np.concatenate(parts, axis=-1).astype(np.float32)


def slm_hidden_state(llama) -> np.ndarray:
    """The last hidden state llama.cpp computed with the latest logits (context made with embedding=True)."""
    import llama_cpp

    ctx = llama._ctx.ctx
    ptr = llama_cpp.llama_get_embeddings_ith(ctx, -1)
    if not ptr:
        raise RouterError("llama.cpp gave no hidden state: create the SLM's Llama with embedding=True")
    return np.ctypeslib.as_array(ptr, shape=(llama.n_embd(),)).copy()


def load_session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session for a router file, single-threaded by default (it runs beside the SLM)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise RouterError(f"router file not found: {path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for bad files
        raise RouterError(f"{path}: not a usable ONNX router ({exc})") from None


class TokenRouter:
    """A learned router for `RelayDecoder(router=...)`: fires when p_llm >= threshold.

    `llama` is the SLM's llama_cpp.Llama (needed when the router reads the hidden state; it
    must be created with embedding=True). When it fires, the LLM writes `run` tokens (1 by
    default: the router is asked again at the next token, so a run lasts while it keeps
    firing). Counters: `steps` asked, `fired`, `seconds` spent in features + forward.
    """

    def __init__(self, path: str | Path, threshold: float = 0.5, *, llama=None, run: int = 1, threads: int = 1):
        if not 0.0 <= threshold <= 1.0:
            raise RouterError(f"threshold must be in [0, 1], got {threshold}")
        if run < 1:
            raise RouterError(f"run must be >= 1, got {run}")
        self.path = Path(path)
        self.session = load_session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in meta:
            raise RouterError(f"{path}: no feature spec in the ONNX metadata (not made by relayllm's router export)")
        self.spec = FeatureSpec.from_json(meta[SPEC_KEY])
        self.mode = meta.get(MODE_KEY, "router")
        self.threshold = float(threshold)
        self.run = int(run)
        self.llama = llama
        if llama is not None and not getattr(llama, "verbose", True):
            # With embeddings on, llama.cpp reports at error level, once per prompt, that it
            # outputs every prompt token (expected here: see the module doc). A quiet SLM
            # stays quiet; real errors still raise.
            import logging

            logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)
        if self.spec.hidden_state and llama is not None and llama.n_embd() != self.spec.hidden_size:
            raise RouterError(f"router expects an SLM with hidden size {self.spec.hidden_size}, got {llama.n_embd()}")
        # a router made without the token embedding (spec.token_embedding False) has no `token`
        # input: the ONNX export drops an input the graph does not read
        self._token_input = any(i.name == "token" for i in self.session.get_inputs())
        self.steps = self.fired = 0
        self.seconds = 0.0

    def score(self, logits, token: int, hidden=None) -> float:
        """p_llm for one position."""
        dense = dense_features(self.spec, logits, hidden)[None, :]
        feed = {"dense": dense}
        if self._token_input:
            feed["token"] = np.asarray([token], dtype=np.int64)
        out = self.session.run(["p_llm"], feed)
        return float(out[0][0])

    def decide(self, step) -> int:
        t0 = time.perf_counter()
        if self.spec.hidden_state and self.llama is None:
            raise RouterError("this router reads the SLM's hidden state: pass llama=<the SLM's Llama>")
        hidden = slm_hidden_state(self.llama) if self.spec.hidden_state else None
        token = int(getattr(step, "token", getattr(step, "candidate", 0)))
        p = self.score(step.logits, token, hidden)
        self.steps += 1
        fire = p >= self.threshold
        self.fired += fire
        self.seconds += time.perf_counter() - t0
        return self.run if fire else 0

    def __repr__(self) -> str:
        return f"TokenRouter({self.mode}, {self.path.name}, threshold={self.threshold:g}, run={self.run})"


def benchmark_router_vs_decode(router_path: str | Path, slm_gguf: str | Path, *, steps: int = 64,
                               threads: int | None = None, printer=print) -> dict:
    """Cost of one router step (features + ONNX forward) against one SLM decode step, same process.

    Decodes `steps` tokens greedily with llama.cpp (context with embedding=True, as the
    router needs) and times the decode calls and the router calls separately. Returns and
    prints the mean milliseconds of each and their ratio.
    """
    import llama_cpp

    from relayllm.edge.models import quiet_llama

    llama = quiet_llama(model_path=str(slm_gguf), n_ctx=512, embedding=True,
                        **({"n_threads": threads} if threads else {}))
    router = TokenRouter(router_path, 0.5, llama=llama)
    ctx = llama._ctx.ctx
    llama.eval(llama.tokenize(b"Question: what is 17 + 25? Answer step by step."))
    decode_s = feature_s = forward_s = 0.0
    vocab = llama.n_vocab()
    for _ in range(steps):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(vocab,))
        token = int(logits.argmax())
        t0 = time.perf_counter()
        hidden = slm_hidden_state(llama) if router.spec.hidden_state else None
        dense = dense_features(router.spec, logits, hidden)[None, :]
        t1 = time.perf_counter()
        router.session.run(["p_llm"], {"dense": dense, "token": np.asarray([token], dtype=np.int64)})
        t2 = time.perf_counter()
        llama.eval([token])
        t3 = time.perf_counter()
        feature_s += t1 - t0
        forward_s += t2 - t1
        decode_s += t3 - t2
    route_s = feature_s + forward_s
    result = {"slm": str(slm_gguf), "router": str(router_path), "steps": steps,
              "decode_ms": 1000 * decode_s / steps, "router_ms": 1000 * route_s / steps,
              "features_ms": 1000 * feature_s / steps, "onnx_ms": 1000 * forward_s / steps,
              "ratio": route_s / decode_s}
    if printer:
        printer(f"router step {result['router_ms']:.3f} ms (features {result['features_ms']:.3f} + onnx "
                f"{result['onnx_ms']:.3f}) vs SLM decode step {result['decode_ms']:.3f} ms: "
                f"ratio {result['ratio']:.3f} ({Path(slm_gguf).name}, {steps} steps)")
    return result

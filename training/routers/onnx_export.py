"""Torch router -> ONNX file the edge runs with onnxruntime (relayllm.edge.token_router)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from relayllm.edge.token_router import MODE_KEY, SPEC_KEY, load_session
from relayllm.training.routers.features import RouterNet

EXTRA_KEY = "relayllm.router_info"


def export_onnx(net: RouterNet, path: str | Path, *, mode: str, info: dict | None = None) -> Path:
    """Write `net` as ONNX (inputs dense [B, D] float32, token [B] int64; output p_llm [B]) with its FeatureSpec."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    dense = torch.zeros(1, net.spec.dense_size)
    token = torch.zeros(1, dtype=torch.long)
    with warnings.catch_warnings():
        # The TorchScript exporter needs no onnxscript and handles this MLP exactly; torch
        # warns that it is the legacy path.
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dense, token), str(path), input_names=["dense", "token"], output_names=["p_llm"],
                          dynamic_axes={"dense": {0: "batch"}, "token": {0: "batch"}, "p_llm": {0: "batch"}},
                          opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    meta = {SPEC_KEY: net.spec.to_json(), MODE_KEY: mode, EXTRA_KEY: json.dumps(info or {})}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@torch.no_grad()
def export_parity(net: RouterNet, path: str | Path, n: int = 256, seed: int = 0) -> float:
    """Max |p_torch - p_onnx| on random features and tokens."""
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, net.spec.dense_size)).astype(np.float32)
    vocab = net.token_table.shape[0]
    token = rng.integers(0, vocab, size=n).astype(np.int64)
    p_torch = net(torch.as_tensor(dense), torch.as_tensor(token)).numpy()
    session = load_session(path)
    feed = {"dense": dense, "token": token}  # a router without the token embedding has no `token` input
    p_onnx = session.run(["p_llm"], {i.name: feed[i.name] for i in session.get_inputs()})[0]
    return float(np.abs(p_torch - p_onnx).max())


def untrained_router_for(slm_gguf: str | Path, path: str | Path, *, hidden: int = 64, seed: int = 0) -> Path:
    """A router of the real size for `slm_gguf` (its vocabulary and hidden size), random weights.

    For benchmarks: a forward costs the same whatever the weights, so the bench can time the
    router against the SLM's decode step without training one first.
    """
    import llama_cpp

    from relayllm.edge.token_router import FeatureSpec

    llama = llama_cpp.Llama(model_path=str(slm_gguf), n_ctx=16, verbose=False)
    vocab, width = llama.n_vocab(), llama.n_embd()
    del llama
    torch.manual_seed(seed)
    spec = FeatureSpec(hidden_size=width)
    net = RouterNet(spec, torch.randn(vocab, width) * 0.02, hidden=hidden)
    return export_onnx(net, path, mode="untrained", info={"note": "random weights, for benchmarks"})


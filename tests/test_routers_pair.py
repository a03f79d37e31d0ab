"""CITER for the real pair (training/routers/pair.py): labels from the 1.5B's own right answers,
features the edge reads from the 0.5B's GGUF through llama.cpp.

Real parts: both GGUFs of the pair (the 1.5B through llama.cpp, the 0.5B dequantized into
torch for training and through llama.cpp at the edge), math-verify grading. Three short
questions keep it quick.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from relayllm.protos import registry
from relayllm.training.routers import pair


def test_labels_call_on_arithmetic_and_not_on_wording():
    decisive = {7, 8}.__contains__  # tokens 7 and 8 hold digits
    labels = pair.citer_labels([1, 2, 7, 3, 5], [1, 4, 8, 3, 7], decisive)
    # agree / wording / digit vs digit / agree / word vs digit
    assert labels.tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]
    # labels = "any" (CITER's own shortcut): every departure is the LLM's
    assert pair.citer_labels([1, 2, 7, 3, 5], [1, 4, 8, 3, 7], lambda t: True).tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="labels must be"):
        pair.PairRouterRecipe(labels="wording")


@pytest.fixture(scope="module")
def pair_router(tmp_path_factory):
    from relayllm.training.data.benchmark import Example, QuestionSet

    out = tmp_path_factory.mktemp("citer-pair")
    questions = QuestionSet([Example("Tom has 3 apples and buys 4 more. How many apples does he have now?", "7"),
                             Example("A box holds 6 eggs. How many eggs are in 5 boxes?", "30"),
                             Example("Sara had 20 dollars and spent 8. How many dollars does she have left?", "12")],
                            instruction="Show the computation in one line, the final answer within \\boxed{}.")
    slm, llm = registry.pull(registry.DEFAULT_SLM, progress=False), registry.pull(registry.DEFAULT_LLM, progress=False)
    recipe = pair.PairRouterRecipe(questions=3, max_new_tokens=200, epochs=5)
    report = pair.build(out, slm=slm, llm=llm, recipe=recipe, questions=questions, progress=False)
    return out, slm, llm, report, recipe, questions


def test_router_is_trained_on_the_llms_right_answers_and_is_small(pair_router):
    out, _, _, report, _, _ = pair_router
    assert report["references"] >= 2  # the 1.5B gets these right
    paths = [json.loads(line)["ids"] for line in (out / "llm_paths.jsonl").read_text().splitlines()]
    assert len(paths) == 3 and report["positions"] <= sum(map(len, paths))
    assert 0 <= report["positives"] <= report["slm_differs"] < report["positions"]
    assert report["onnx_parity"] < 1e-5
    assert report["onnx_bytes"] < 2_000_000  # no 151,936-row token table inside
    assert set(report["held_out"]) == {f"{t:g}" for t in pair.THRESHOLDS}


def test_the_edge_runs_the_router_on_the_slms_llama_cpp_state(pair_router):
    import llama_cpp

    from relayllm.edge.token_router import TokenRouter, dense_features, slm_hidden_state
    from relayllm.training.relay.checkpoints import load_checkpoint
    from relayllm.training.routers.features import feature_spec_for, sequence_features

    out, slm, _, _, _, _ = pair_router
    llama = llama_cpp.Llama(model_path=str(slm), n_ctx=256, embedding=True, verbose=False, n_threads=2)
    router = TokenRouter(out / "citer.onnx", 0.5, llama=llama)
    assert router.mode == "citer" and router.spec.hidden_size == 896 and not router.spec.token_embedding
    # the features it was trained on (torch, the GGUF dequantized) are the ones the edge reads
    model, _ = load_checkpoint(slm, what="SLM", commands=False)
    spec = feature_spec_for(model, token_embedding=False)
    ids = llama.tokenize(b"A box holds 6 eggs. 5 boxes hold 6 * 5 = 30 eggs.", add_bos=False)
    trained = sequence_features(model, ids, spec)
    for t in (3, len(ids) // 2, len(ids) - 1):
        llama.reset()
        llama.eval(ids[: t + 1])
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama._ctx.ctx, -1), shape=(llama.n_vocab(),))
        edge = dense_features(spec, logits, slm_hidden_state(llama))
        assert int(logits.argmax()) == int(trained.greedy[t])
        # llama.cpp runs the Q4_K_M blocks, torch their dequantized float32: close, not equal
        np.testing.assert_allclose(edge[: spec.top_k], trained.dense[t, : spec.top_k], atol=0.05)
        cos = float(edge[spec.top_k + 1:] @ trained.dense[t, spec.top_k + 1:]
                    / np.linalg.norm(edge[spec.top_k + 1:]) / np.linalg.norm(trained.dense[t, spec.top_k + 1:]))
        assert cos > 0.98
        p = router.score(logits, int(logits.argmax()), slm_hidden_state(llama))
        assert 0.0 <= p <= 1.0


def test_a_second_build_reads_the_llms_paths_from_its_cache(pair_router, monkeypatch):
    out, slm, llm, report, recipe, questions = pair_router
    from relayllm.edge import models

    def no_llama(*a, **k):
        raise AssertionError("the LLM's paths should come from the cache")

    monkeypatch.setattr(models, "quiet_llama", no_llama)
    again = pair.build(out, slm=slm, llm=llm, recipe=recipe, questions=questions, progress=False)
    assert again["references"] == report["references"] and again["positions"] == report["positions"]


def test_cli_says_what_is_wrong_in_one_line(capsys):
    assert pair.main(["--out", "unused", "--questions", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err


SHIPPED = Path(pair.__file__).resolve().parent / "shipped" / "citer-qwen2.5-coder-pair"


def test_the_shipped_pair_router_is_of_todays_recipe_and_runs_on_the_slm():
    """The router the README's GSM8K table uses: fails when the recipe changes and the router
    is not rebuilt with it (python -m relayllm.training.routers.pair)."""
    import hashlib
    from dataclasses import asdict

    from relayllm.edge.models import quiet_llama
    from relayllm.edge.token_router import TokenRouter

    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert manifest["recipe"] == asdict(pair.PairRouterRecipe())
    assert hashlib.sha256((SHIPPED / "citer.onnx").read_bytes()).hexdigest() == manifest["sha256"]
    report = json.loads((SHIPPED / "report.json").read_text())
    assert report["recipe"] == manifest["recipe"] and report["slm"] == registry.pull(registry.DEFAULT_SLM).name
    llama = quiet_llama(model_path=str(registry.pull(registry.DEFAULT_SLM, progress=False)), n_ctx=64, embedding=True)
    router = TokenRouter(SHIPPED / "citer.onnx", 0.5, llama=llama)
    assert router.mode == "citer" and router.spec.hidden_size == llama.n_embd() == 896


def test_the_suite_takes_a_citer_router_only_for_the_whole_table(capsys):
    from relayllm.protos.cli import main

    assert main(["eval", "--suite", "gsm8k", "--mode", "slm", "--citer-router", str(SHIPPED / "citer.onnx")]) == 2
    assert "--mode all" in capsys.readouterr().err
    assert main(["eval", "--suite", "gsm8k", "--mode", "all", "--citer-router", "missing.onnx"]) == 2
    assert "no such file" in capsys.readouterr().err

"""CITER and R2R for the real pair (training/routers/pair.py): labels from the 1.5B's own right
answers (R2R: and from its branches after each departure), features the edge reads from the
0.5B's GGUF through llama.cpp.

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


def test_r2r_labels_mark_the_departures_whose_branch_ends_wrong(smollm2_path, tmp_path):
    """Each departure of the SLM from the reference gets a branch: the reference up to there, the
    SLM's token, the LLM's greedy continuation; a branch graded wrong labels its position 1.
    (SmolLM2 writes the branches: the labelling does not care which GGUF the LLM is.)"""
    from relayllm.edge.models import quiet_llama
    from relayllm.training.routers.pair_r2r import r2r_labels

    vocab = quiet_llama(model_path=str(smollm2_path), vocab_only=True)
    prompt = vocab.tokenize(b"Question: what is 2 + 2? Answer:", add_bos=False)
    ref = vocab.tokenize(b" 2 + 2 = 4, so the answer is 4.", add_bos=False)
    other = vocab.tokenize(b" 5", add_bos=False)[0]
    slm = list(ref)
    slm[1], slm[4] = other, other  # the SLM departs at positions 1 and 4
    branches = []

    def right(q, ids):  # a branch is right when it kept the reference's token 1
        branches.append(list(ids))
        return ids[1] == ref[1]

    cache = tmp_path / "branches.jsonl"
    labels, counts = r2r_labels(smollm2_path, [prompt], [ref], [slm], right, max_new_tokens=12,
                                cache_file=cache, progress=False)
    assert labels[0].tolist() == [0, 1, 0, 0, 0] + [0] * (len(ref) - 5)
    assert counts["departures"] == 2 and counts["divergent"] == 1 and counts["branches_written"] == 2
    assert [b[: i + 1] for b, i in zip(branches, (1, 4))] == [ref[:1] + [other], ref[:4] + [other]]
    assert all(len(b) <= 12 for b in branches) and len(cache.read_text().splitlines()) == 2

    def no_grading(q, ids):
        raise AssertionError("the branches should come from the cache")

    again, counts = r2r_labels(smollm2_path, [prompt], [ref], [slm], no_grading, max_new_tokens=12,
                               cache_file=cache, progress=False)
    assert again[0].tolist() == labels[0].tolist() and counts["branches_written"] == 0


def test_r2r_router_for_the_pair_keeps_only_departures_that_change_the_outcome(pair_router, tmp_path):
    import shutil

    from relayllm.edge.models import quiet_llama
    from relayllm.edge.token_router import TokenRouter

    out, slm, llm, citer_report, recipe, questions = pair_router
    shutil.copy(out / "llm_paths.jsonl", tmp_path / "llm_paths.jsonl")  # the 1.5B's answers, as CITER's
    report = pair.build(tmp_path, slm=slm, llm=llm, recipe=recipe, questions=questions, progress=False, router="r2r")
    assert report["router"] == "r2r" and report["references"] == citer_report["references"]
    # one branch per departure; the divergent ones are the positives, a subset of CITER's
    assert report["departures"] == report["slm_differs"] == citer_report["positives"]
    assert report["positives"] == report["divergent"] <= report["departures"]
    assert len((tmp_path / "r2r_branches.jsonl").read_text().splitlines()) == report["branches_written"] \
        == report["departures"]
    llama = quiet_llama(model_path=str(slm), n_ctx=64, embedding=True)
    assert TokenRouter(tmp_path / "r2r.onnx", 0.5, llama=llama).mode == "r2r"


def test_cli_says_what_is_wrong_in_one_line(capsys):
    assert pair.main(["--out", "unused", "--questions", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err


SHIPPED_ROUTERS = Path(pair.__file__).resolve().parent / "shipped"
SHIPPED = SHIPPED_ROUTERS / "citer-qwen2.5-coder-pair"


@pytest.mark.parametrize("mode", pair.ROUTERS)
def test_the_shipped_pair_router_is_of_todays_recipe_and_runs_on_the_slm(mode):
    """The routers the README's GSM8K table uses: fails when the recipe changes and a router
    is not rebuilt with it (python -m relayllm.training.routers.pair [--router r2r])."""
    import hashlib
    from dataclasses import asdict

    from relayllm.edge.models import quiet_llama
    from relayllm.edge.token_router import TokenRouter

    folder = SHIPPED_ROUTERS / f"{mode}-qwen2.5-coder-pair"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"] == asdict(pair.PairRouterRecipe()) and manifest["file"] == f"{mode}.onnx"
    assert hashlib.sha256((folder / manifest["file"]).read_bytes()).hexdigest() == manifest["sha256"]
    report = json.loads((folder / "report.json").read_text())
    assert report["recipe"] == manifest["recipe"] and report["slm"] == registry.pull(registry.DEFAULT_SLM).name
    assert report.get("router", "citer") == mode
    llama = quiet_llama(model_path=str(registry.pull(registry.DEFAULT_SLM, progress=False)), n_ctx=64, embedding=True)
    router = TokenRouter(folder / manifest["file"], 0.5, llama=llama)
    assert router.mode == mode and router.spec.hidden_size == llama.n_embd() == 896


def test_the_suite_takes_a_citer_router_only_for_the_whole_table(capsys):
    from relayllm.protos.cli import main

    assert main(["eval", "--suite", "gsm8k", "--mode", "slm", "--citer-router", str(SHIPPED / "citer.onnx")]) == 2
    assert "--mode all" in capsys.readouterr().err
    assert main(["eval", "--suite", "gsm8k", "--mode", "all", "--citer-router", "missing.onnx"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["eval", "--suite", "gsm8k", "--mode", "citer", "--r2r-router", str(SHIPPED / "citer.onnx")]) == 2
    assert "--r2r-router adds R2R" in capsys.readouterr().err
    assert main(["eval", "--suite", "gsm8k", "--mode", "all", "--r2r-router", "missing.onnx"]) == 2
    assert "--r2r-router: no such file" in capsys.readouterr().err


def test_the_suite_puts_both_routers_in_the_table_with_thresholds_chosen_on_validation(smollm2_path, tmp_path):
    """`--citer-router` and `--r2r-router` together: each router is swept on validation, its
    chosen threshold runs on the development test, and both rows reach the table. SmolLM2
    plays both models and an untrained router of its size both routers: the suite's plumbing
    is under test here, not the pair (the shipped router's test above runs on the 0.5B)."""
    from relayllm.protos.cli import main
    from relayllm.training.eval import suite
    from relayllm.training.routers.onnx_export import untrained_router_for

    router = untrained_router_for(smollm2_path, tmp_path / "router.onnx")
    out = tmp_path / "gsm"
    assert main(["eval", "--suite", "gsm8k", "--mode", "all", "--validation", "1", "--limit", "1",
                 "--max-tokens", "6", "--slm", str(smollm2_path), "--llm", str(smollm2_path),
                 "--citer-router", str(router), "--r2r-router", str(router), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    table = (out / "results.md").read_text()
    for mode in ("citer", "r2r"):
        chosen = summary[f"{mode}_choice"]["setting"]
        assert chosen in suite.ROUTER_THRESHOLDS
        assert len(list((out / "records").glob(f"{mode}-*.jsonl"))) >= 1
        validation = json.loads((out / "validation" / f"{mode}.json").read_text())
        assert len(validation["runs"]) == len(suite.ROUTER_THRESHOLDS)
        assert f"{suite.ROUTER_NAMES[mode]}: not in this table" not in table
    assert "| r2r threshold=" in table.replace("R2R", "r2r") and "| citer threshold=" in table.replace("CITER", "citer")

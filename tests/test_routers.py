"""Token routers (R2R, CITER): features, ONNX export, labelling pipelines, the edge router.

A miniature Llama (SmolLM2's tokenizer, 2 layers, hidden 32) is built once per session, saved
as an HF dir and converted to an f32 GGUF with llama.cpp's converter, so the edge (llama.cpp)
and the trainer (torch) run the same weights.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _mini_model(tok, seed: int, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def mini(tmp_path_factory, smollm2_path):
    """(HF SLM, HF LLM, SLM GGUF path, tokenizer): two miniature models with different seeds."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("mini")
    tok = AutoTokenizer.from_pretrained(str(Path(smollm2_path).parent), gguf_file=Path(smollm2_path).name)
    slm, llm = _mini_model(tok, 0), _mini_model(tok, 1, hidden=48)
    slm.save_pretrained(root / "slm")
    tok.save_pretrained(root / "slm")
    gguf = root / "slm.gguf"
    from relayllm.training.models.export import convert

    convert(root / "slm", gguf, "f32")
    return SimpleNamespace(slm=slm, llm=llm, gguf=gguf, tok=tok, root=root)


@pytest.fixture(scope="session")
def mini_llama(mini):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(mini.gguf), n_ctx=256, embedding=True, verbose=False, n_threads=1)


def _llama_logits(llama):
    import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama._ctx.ctx, -1), shape=(llama.n_vocab(),)).copy()


# ---------------------------------------------------------------------------------------
# Features


def test_probability_features_are_sorted_topk_and_entropy():
    from relayllm.edge.token_router import probability_features

    logits = np.log(np.array([0.1, 0.6, 0.3], dtype=np.float64))
    f = probability_features(logits, top_k=4)
    assert np.allclose(f[:4], [0.6, 0.3, 0.1, 0.0], atol=1e-6)  # vocabulary smaller than k: zero padded
    assert f[4] == pytest.approx(-(0.1 * np.log(0.1) + 0.6 * np.log(0.6) + 0.3 * np.log(0.3)), rel=1e-5)
    batch = probability_features(np.stack([logits, logits[::-1]]), top_k=2)
    assert batch.shape == (2, 3) and np.allclose(batch[0], batch[1])


def test_edge_features_from_llama_cpp_match_the_models_own_logits(mini, mini_llama):
    """llama.cpp's logits and hidden state (embedding=True) give the features torch computes in training."""
    from relayllm.edge.token_router import dense_features, slm_hidden_state
    from relayllm.training.routers.features import feature_spec_for, sequence_features

    spec = feature_spec_for(mini.slm)
    ids = mini_llama.tokenize(b"What is 47 + 38? Carry the 1.", add_bos=False)
    trained = sequence_features(mini.slm, ids, spec, keep_logits=True)
    for t in range(len(ids)):
        mini_llama.reset()
        mini_llama.eval(ids[: t + 1])
        logits = _llama_logits(mini_llama)
        edge = dense_features(spec, logits, slm_hidden_state(mini_llama))
        assert int(logits.argmax()) == int(trained.greedy[t])
        np.testing.assert_allclose(logits, trained.logits[t], atol=1e-3)
        np.testing.assert_allclose(edge[: spec.top_k + 1], trained.dense[t, : spec.top_k + 1], atol=1e-5)
        np.testing.assert_allclose(edge[spec.top_k + 1:], trained.dense[t, spec.top_k + 1:], atol=1e-3)


def test_hidden_state_needs_an_embedding_context(mini):
    import llama_cpp

    from relayllm.edge.token_router import RouterError, slm_hidden_state

    llama = llama_cpp.Llama(model_path=str(mini.gguf), n_ctx=64, verbose=False, n_threads=1)
    llama.eval(llama.tokenize(b"hi", add_bos=False))
    with pytest.raises(RouterError, match="embedding=True"):
        slm_hidden_state(llama)


# ---------------------------------------------------------------------------------------
# Router network and ONNX


@pytest.fixture(scope="session")
def exported_router(mini, tmp_path_factory):
    from relayllm.training.routers.onnx_export import export_onnx
    from relayllm.training.routers.features import RouterNet, feature_spec_for

    spec = feature_spec_for(mini.slm)
    torch.manual_seed(3)
    net = RouterNet(spec, mini.slm.get_input_embeddings().weight, hidden=16)
    net.set_normalisation(np.random.default_rng(0).normal(size=(64, spec.dense_size)).astype(np.float32))
    path = export_onnx(net, tmp_path_factory.mktemp("router") / "r2r.onnx", mode="r2r")
    return net, path


def test_onnx_export_parity_with_torch_router(exported_router):
    from relayllm.training.routers.onnx_export import export_parity

    net, path = exported_router
    diff = export_parity(net, path, n=512)
    print(f"ONNX vs torch router: max abs diff {diff:.2e}")
    assert diff < 1e-5


def test_edge_router_decides_from_llama_cpp_state(mini, mini_llama, exported_router):
    from relayllm.edge.token_router import TokenRouter, dense_features, slm_hidden_state

    net, path = exported_router
    mini_llama.reset()
    mini_llama.eval(mini_llama.tokenize(b"12 + 30 =", add_bos=False))
    logits = _llama_logits(mini_llama)
    step = SimpleNamespace(logits=logits, token=int(logits.argmax()), position=0, text="12 + 30 =")
    p = TokenRouter(path, llama=mini_llama).score(logits, step.token, slm_hidden_state(mini_llama))
    dense = dense_features(net.spec, logits, slm_hidden_state(mini_llama))
    with torch.no_grad():
        expected = float(net(torch.as_tensor(dense[None]), torch.tensor([step.token]))[0])
    assert p == pytest.approx(expected, abs=1e-5)
    fires = TokenRouter(path, threshold=max(0.0, p - 1e-3), llama=mini_llama, run=3)
    silent = TokenRouter(path, threshold=min(1.0, p + 1e-3), llama=mini_llama)
    assert fires.decide(step) == 3 and fires.fired == 1
    assert silent.decide(step) == 0 and silent.steps == 1 and silent.fired == 0
    assert fires.mode == "r2r" and fires.spec == net.spec


def test_benchmark_router_has_the_slms_sizes_and_runs_beside_it(mini, tmp_path):
    from relayllm.edge.token_router import TokenRouter, benchmark_router_vs_decode
    from relayllm.training.routers.onnx_export import untrained_router_for

    path = untrained_router_for(mini.gguf, tmp_path / "bench.onnx", hidden=8)
    router = TokenRouter(path)
    assert router.spec.hidden_size == 32 and router.mode == "untrained"
    result = benchmark_router_vs_decode(path, mini.gguf, steps=4, threads=1)
    assert result["steps"] == 4 and result["router_ms"] > 0 and result["decode_ms"] > 0
    assert result["ratio"] == pytest.approx(result["router_ms"] / result["decode_ms"])


def test_router_file_errors_are_readable(tmp_path, mini_llama):
    from relayllm.edge.token_router import RouterError, TokenRouter

    with pytest.raises(RouterError, match="not found"):
        TokenRouter(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(RouterError, match="not a usable ONNX router"):
        TokenRouter(bad)


# ---------------------------------------------------------------------------------------
# Labelling on crafted cases: scripted greedy next-token functions, so we know which
# disagreement changes the answer. Token 2 is EOS.


class ScriptedLM:
    """Greedy next token = a function of the last token (the only thing scripted)."""

    def __init__(self, table: dict[int, int], eos: int = 2):
        self.table, self.eos = table, eos
        self.completions = 0

    def _next(self, prefix) -> int:
        return self.table.get(prefix[-1], self.eos)

    def next_tokens(self, ids, start):
        return np.array([self._next(ids[: t + 1]) for t in range(start, len(ids))])

    def complete(self, ids, max_new):
        self.completions += 1
        seq, new = list(ids), []
        while len(new) < max_new:
            tok = self._next(seq)
            seq.append(tok)
            new.append(tok)
            if tok == self.eos:
                break
        return new


def test_r2r_labels_divergent_only_where_the_answer_changes():
    from relayllm.training.routers.r2r import AGREE, DIVERGENT, NEUTRAL, label_prompt

    # The LLM answers 10 11 12 EOS; an answer is right when it contains 12.
    llm = ScriptedLM({1: 10, 10: 11, 11: 12, 12: 2, 20: 12, 21: 2})
    # The SLM agrees at 10 and EOS, says 20 after 10 (the LLM recovers: neutral) and 21 after
    # 11 (the LLM then stops without 12: divergent).
    slm = ScriptedLM({1: 10, 10: 20, 11: 21, 12: 2})
    path = label_prompt([1], slm, llm, lambda resp: 12 in resp, max_new=10)
    assert path.response_ids == [10, 11, 12, 2]
    assert path.kinds == [AGREE, NEUTRAL, DIVERGENT, AGREE]
    assert path.labels.tolist() == [0.0, 0.0, 1.0, 0.0]
    assert path.rollouts == 2 and llm.completions == 3  # the path itself + one per disagreement


def test_citer_shortcut_labels_and_rollouts():
    from relayllm.training.routers.citer import LLM_MATCHES, ROLLED_OUT, SLM_MATCHES, label_prompt

    reference = [10, 11, 12, 13, 2]
    right = lambda resp: 13 in resp
    slm = ScriptedLM({1: 10, 10: 20, 11: 21, 21: 13, 12: 30, 30: 2, 13: 2})
    llm = ScriptedLM({1: 10, 10: 11, 11: 22, 12: 31, 13: 2})
    path = label_prompt([1], reference, slm, llm, right, max_new=10, cost_per_llm_token=0.1)
    # pos 0, 4: SLM on the reference; pos 1: only the LLM is; pos 2: both off, the SLM's own
    # rollout (21 13 EOS) is still right -> SLM; pos 3: both off, the rollout (30 EOS) is wrong -> LLM.
    assert path.cases == [SLM_MATCHES, LLM_MATCHES, ROLLED_OUT, ROLLED_OUT, SLM_MATCHES]
    assert path.labels.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert path.rollouts == 2 and slm.completions == 2 and llm.completions == 0
    # An LLM token dearer than a right answer is worth: never route on a rollout.
    dear = label_prompt([1], reference, slm, llm, right, max_new=10, cost_per_llm_token=1.5)
    assert dear.labels.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------
# The pipelines end to end on the miniature models (real torch models, tiny budget)


def test_held_out_positions_come_from_held_out_questions(mini):
    """Precision and recall are measured on questions the router never saw: the positions of one
    answer share its prefix and solution, so splitting positions would leak them across."""
    from relayllm.training.routers.features import RouterData, feature_spec_for, labelled_data

    rng = np.random.default_rng(0)
    sizes = [3, 7, 1, 12, 5, 9, 4, 6, 2, 8]
    question = np.concatenate([np.full(n, q) for q, n in enumerate(sizes)])
    n = len(question)
    data = RouterData(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 50, n),
                      (rng.random(n) < 0.3).astype(np.float32), question)
    for held_out, seed in [(0.25, 0), (0.25, 1), (0.5, 3), (0.1, 2)]:
        train, test = data.split(held_out, seed)
        assert not set(train.question) & set(test.question), "a question on both sides"
        assert set(train.question) | set(test.question) == set(range(len(sizes)))
        assert len(train) + len(test) == n and len(test) > 0 and len(train) > 0
        assert test.questions == max(1, round(held_out * len(sizes)))
        # every position of a held-out question is held out, with its own features and label
        for q in set(test.question):
            rows = np.flatnonzero(data.question == q)
            assert (test.question == q).sum() == len(rows)
            np.testing.assert_array_equal(test.dense[test.question == q], data.dense[rows])
            np.testing.assert_array_equal(test.label[test.question == q], data.label[rows])
    assert [len(p) for p in data.split(0.25, 7)] == [len(p) for p in data.split(0.25, 7)]  # seeded
    # the features builder tags each position with its question (an empty response adds none)
    tok = mini.tok
    paths = [(tok.encode("1 + 1 ="), tok.encode(" 2"), np.zeros(len(tok.encode(" 2")), np.float32)),
             (tok.encode("2 + 2 ="), [], np.zeros(0, np.float32)),
             (tok.encode("3 + 4 ="), tok.encode(" 7 ok"), np.ones(len(tok.encode(" 7 ok")), np.float32))]
    built = labelled_data(mini.slm, feature_spec_for(mini.slm), paths)
    assert built.question.tolist() == [0] * len(paths[0][1]) + [2] * len(paths[2][1])


def test_r2r_and_citer_pipelines_train_and_export(mini, mini_llama, tmp_path):
    from relayllm.edge.token_router import TokenRouter
    from relayllm.training.routers.citer import train_citer
    from relayllm.training.routers.r2r import train_r2r

    tok = mini.tok
    prompts = [tok.encode(f"{a} + {b} =") for a, b in [(3, 4), (12, 30), (7, 8), (25, 17), (40, 2), (9, 9)]]
    # The SLM's own greedy answer counts as right: disagreements with the LLM then change
    # correctness, so there are positives to learn from.
    from relayllm.training.routers.features import HFGreedyLM

    slm = HFGreedyLM(mini.slm)
    graders = []
    for p in prompts:
        target = slm.complete(p, 6)
        graders.append(lambda resp, target=target: resp[: len(target)] == target)
    report = train_r2r(mini.slm, mini.llm, list(zip(prompts, graders)), out_path=tmp_path / "r2r.onnx", max_new=6,
                       hidden=8, epochs=5, progress=False)
    assert report.prompts == 6 and report.positions > 0 and report.rollouts == report.disagreements
    # precision and recall on held-out questions: 6 * 0.25 -> 2 questions held out, 4 trained on
    assert (report.train["questions"], report.held_out["questions"]) == (4, 2)
    assert report.train["n"] + report.held_out["n"] == report.positions
    assert TokenRouter(tmp_path / "r2r.onnx", llama=mini_llama).mode == "r2r"

    references = [slm.complete(p, 6) for p in prompts]
    examples = [(p, r, g) for p, r, g in zip(prompts, references, graders)]
    creport = train_citer(mini.slm, mini.llm, examples, out_path=tmp_path / "citer.onnx", max_new=6, hidden=8,
                          epochs=5, iterations=2, progress=False)
    assert (creport.train["questions"], creport.held_out["questions"]) == (4, 2)
    # The references are the SLM's own answers: every position is shortcut case 1.
    assert creport.case_counts["slm_matches"] == creport.positions and creport.rollouts == 0
    assert creport.rollouts_saved == 1.0
    assert TokenRouter(tmp_path / "citer.onnx", llama=mini_llama).mode == "citer"


# ---------------------------------------------------------------------------------------
# The router inside the edge decoder, with a real cloud on loopback (and without one).
# These use the edge's RelayDecoder and the cloud's server through the evaluation harness,
# exactly as `relayllm eval --mode r2r|citer` does.


def _closed_port_target() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"  # nothing listens there any more: connections are refused


def test_router_fires_while_the_cloud_is_down_the_slm_writes_and_the_result_is_degraded(mini, exported_router):
    from relayllm.edge.client import CloudClient
    from relayllm.edge import Limits, RelayDecoder, Sampling
    from relayllm.edge.token_router import TokenRouter
    import llama_cpp

    _, path = exported_router
    llama = llama_cpp.Llama(model_path=str(mini.gguf), n_ctx=256, embedding=True, verbose=False, n_threads=1)
    router = TokenRouter(path, threshold=0.0, llama=llama)  # fires at every token
    decoder = RelayDecoder(llama, cloud=CloudClient(_closed_port_target()), router=router,
                           limits=Limits(max_calls=8, max_total_tokens=8, max_llm_tokens=8),
                           sampling=Sampling(temperature=0.0))
    offline = RelayDecoder(llama, cloud=None, limits=Limits(max_calls=0, max_total_tokens=8, max_llm_tokens=8),
                           sampling=Sampling(temperature=0.0)).generate("12 + 30 =")
    result = decoder.generate("12 + 30 =")
    assert router.fired >= 1
    assert result.degraded and result.degraded_reasons
    assert result.llm_tokens == 0 and result.slm_tokens > 0
    assert result.text == offline.text  # the SLM wrote every token, nothing lost


def test_eval_r2r_mode_through_the_cloud_counts_llm_tokens(mini, exported_router):
    from relayllm.training import eval as E

    _, path = exported_router
    examples = [E.Example("12 + 30 =", "42"), E.Example("7 + 8 =", "15")]
    with E.local_cloud(mini.gguf) as target, E.Evaluator(cloud_target=target, grader=lambda text, gold: gold in text,
                                                         max_tokens=6, progress=False) as ev:
        always = ev.run_learned_router(examples, mini.gguf, path, 0.0, "r2r")
        never = ev.run_learned_router(examples, mini.gguf, path, 1.0, "r2r")
    assert always.llm_token_ratio == 1.0 and always.calls_per_question >= 1 and always.degraded == 0
    assert never.llm_token_ratio == 0.0 and never.llm_tokens == 0
    assert always.mode == "r2r" and always.setting_name == "threshold"

"""The evaluation harness: arithmetic on hand-made records, routers, outputs, and every mode end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from relayllm.edge.routers import AlwaysLLMRouter, ConfidenceRouter, RandomRouter, top_probability
from relayllm.training import eval as E


def rec(i, correct, slm, llm, calls=0, wall=0.1):
    return E.QuestionRecord(index=i, question=f"q{i}", answer="1", response="r", correct=correct,
                            slm_tokens=slm, llm_tokens=llm, calls=calls, wall_s=wall)


# --------------------------------------------------------------------------------------------
# Ratio arithmetic and headline figures on hand-made records


def test_llm_token_ratio_is_summed_over_the_data_set_not_averaged():
    # per-question ratios 50% and 0% would average to 25%; the brief's ratio is 10 / 120.
    records = [rec(0, True, 10, 10, calls=1), rec(1, False, 100, 0)]
    assert E.llm_token_ratio(records) == pytest.approx(10 / 120)
    run = E.ModeRun("relay", None, records, wall_s=2.0)
    assert run.accuracy == 0.5
    assert run.calls_per_question == 0.5
    assert (run.slm_tokens, run.llm_tokens, run.tokens) == (110, 10, 120)
    assert E.llm_token_ratio([]) == 0.0
    assert E.llm_token_ratio([rec(0, True, 0, 0)]) == 0.0


def test_gap_recovered():
    assert E.gap_recovered(0.40, 0.46, 0.50) == pytest.approx(0.6)
    assert E.gap_recovered(0.40, 0.30, 0.50) == pytest.approx(-1.0)
    assert E.gap_recovered(0.50, 0.60, 0.50) is None  # no gap to recover


def test_cost_saved_vs_random_router_only_from_measured_points():
    # relay: 3/4 right with 2 of 100 tokens from the LLM
    relay = E.ModeRun("relay", None, [rec(0, True, 49, 1), rec(1, True, 49, 1), rec(2, True, 0, 0), rec(3, False, 0, 0)], 1)
    half = E.ModeRun("random", 0.5, [rec(0, True, 50, 50), rec(1, True, 50, 50), rec(2, False, 1, 0), rec(3, False, 0, 0)],
                     1, "p")  # ratio 100/201, accuracy 50%: below relay
    most = E.ModeRun("random", 0.8, [rec(i, i < 3, 20, 80) for i in range(4)], 1, "p")  # 75% at 80%
    assert relay.llm_token_ratio == pytest.approx(0.02)
    # the cheapest measured run at relay's accuracy, not a line drawn between p=0.5 and the LLM
    cost = E.saved_vs_random(relay, [half, most])
    assert cost.random_setting == 0.8 and cost.random_ratio == pytest.approx(0.8)
    assert cost.saved == pytest.approx(1 - 0.02 / 0.8)
    assert cost.below == pytest.approx(100 / 201)
    # no measured run reaches relay: the figure says so, with no number
    cost = E.saved_vs_random(relay, [half])
    assert cost.saved is None and cost.random_ratio is None and cost.note.startswith("never reached")


def test_random_query_split_reuses_slm_and_llm_records_for_an_exact_share():
    slm = E.ModeRun("slm", None, [rec(i, False, 10, 0) for i in range(10)], 1)
    llm = E.ModeRun("llm", None, [rec(i, True, 0, 20, calls=1) for i in range(10)], 1)
    q = E.random_query_split_run(slm, llm, share=0.3, seed=1)
    assert sum(r.routed_to == "llm" for r in q.records) == 3
    assert q.accuracy == pytest.approx(0.3)
    assert q.llm_token_ratio == pytest.approx(60 / (60 + 70))
    assert [r.routed_to for r in q.records] == [r.routed_to for r in E.random_query_split_run(slm, llm, 0.3, seed=1).records]
    assert E.random_query_split_run(slm, llm, 0.0).llm_token_ratio == 0.0
    assert E.random_query_split_run(slm, llm, 1.0).accuracy == 1.0
    # named for what it is wherever a reader sees it: no router chooses the questions
    assert q.mode == "query" and q.label == "random query split share=0.3"
    assert "router" not in q.label


def test_chosen_only_where_the_rule_chose_among_admissible_settings():
    def run(mode, setting, correct, llm):
        return E.ModeRun(mode, setting, [rec(0, correct, 10 - llm, llm), rec(1, False, 10, 0)], 1, "s")

    # two settings under the 15% cap: the rule chose the more accurate one
    c = E.choose([run("confidence", 0.3, False, 1), run("confidence", 0.5, True, 2)])
    assert (c.setting, c.admissible, c.tried, c.chose, c.mark) == (0.5, 2, 2, True, " (chosen)")
    # every setting above the cap (the random query split's shares: 25% and more of the questions):
    # the lowest ratio is taken, and the row must not say chosen
    c = E.choose([run("query", 0.25, True, 5), run("query", 0.5, True, 8)])
    assert (c.setting, c.admissible, c.chose) == (0.25, 0, False)
    assert "chosen" not in c.mark and "none under the cap" in c.mark
    # a lone setting: nothing to choose among
    c = E.choose([run("relay", None, True, 1)])
    assert (c.tried, c.chose, c.mark) == (1, False, "")
    assert E.choose([run("x", 0.1, True, 1), run("x", 0.2, True, 9)]).chose  # one under the cap of two


# --------------------------------------------------------------------------------------------
# Routers


def test_random_router_share_matches_p_over_many_steps():
    step = SimpleNamespace(logits=np.zeros(8), token=0, position=0, text="")
    for p in (0.01, 0.1, 0.5):
        router = RandomRouter(p, seed=3)
        fired = sum(router.decide(step) > 0 for _ in range(50_000))
        assert fired / 50_000 == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / 50_000) + 1e-4)
    # with runs of 4 LLM tokens, the share of LLM *tokens* is still p
    router = RandomRouter(0.2, seed=5, run=4)
    llm = slm = 0
    while llm + slm < 200_000:
        n = router.decide(step)
        llm, slm = (llm + n, slm) if n else (llm, slm + 1)
    assert llm / (llm + slm) == pytest.approx(0.2, abs=0.01)
    # same seed, same decisions
    a, b = RandomRouter(0.3, seed=9), RandomRouter(0.3, seed=9)
    assert [a.decide(step) for _ in range(100)] == [b.decide(step) for _ in range(100)]
    assert all(RandomRouter(0.0).decide(step) == 0 for _ in range(100))
    assert all(RandomRouter(1.0).decide(step) == 1 for _ in range(100))
    with pytest.raises(ValueError):
        RandomRouter(1.5)


def test_confidence_router_fires_exactly_below_threshold():
    logits = np.array([2.0, 1.0, 0.0, -1.0])
    top = np.exp(2.0) / np.exp(logits).sum()
    assert top_probability(logits) == pytest.approx(top)
    assert top_probability(np.array([1000.0, 0.0])) == pytest.approx(1.0)  # no overflow
    step = SimpleNamespace(logits=logits, token=0, position=0, text="")
    assert ConfidenceRouter(top + 1e-6).decide(step) == 1
    assert ConfidenceRouter(top - 1e-6).decide(step) == 0
    assert ConfidenceRouter(0.0).decide(step) == 0
    assert AlwaysLLMRouter(run=7).decide(step) == 7


# --------------------------------------------------------------------------------------------
# Data and outputs


def test_load_jsonl_reads_and_reports_bad_lines(tmp_path):
    good = tmp_path / "d.jsonl"
    good.write_text('{"question": "1+1?", "answer": "2"}\n\n{"question": "2+2?", "answer": 4}\n')
    assert E.load_jsonl(good) == [E.Example("1+1?", "2"), E.Example("2+2?", "4")]
    assert len(E.load_jsonl(good, limit=1)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "answer": "1"}\n{"question": "y"}\n')
    with pytest.raises(E.DataError, match="bad.jsonl:2"):
        E.load_jsonl(bad)
    bad.write_text("not json\n")
    with pytest.raises(E.DataError, match="not valid JSON"):
        E.load_jsonl(bad)
    with pytest.raises(E.DataError, match="not found"):
        E.load_jsonl(tmp_path / "missing.jsonl")


def test_json_markdown_and_png_are_written_and_consistent(tmp_path):
    slm = E.ModeRun("slm", None, [rec(0, False, 10, 0), rec(1, True, 10, 0)], 1.5)
    rnd = [E.ModeRun("random", p, [rec(0, True, 9, 1, 1), rec(1, True, 8, 2, 2)], 2.0, "p") for p in (0.1, 0.2)]
    E.write_mode_json(tmp_path, "slm", [slm])
    E.write_mode_json(tmp_path, "random", rnd)
    table, plot = E.write_report(tmp_path)
    runs = E.read_runs(tmp_path)
    assert [r.label for r in runs] == ["slm", "random p=0.1", "random p=0.2"]
    saved = json.loads((tmp_path / "random.json").read_text())
    assert saved["runs"][0]["llm_token_ratio"] == pytest.approx(3 / 20)
    assert saved["runs"][0]["accuracy"] == 1.0 and len(saved["runs"][0]["records"]) == 2
    md = table.read_text()
    assert "| slm | 50.0% (9.5-90.5, n=2) | 0.00% | 0.00 | 0 + 0 | 0.000 | 0.100 | 0.100 |" in md
    assert "| random p=0.1 | 100.0% (34.2-100.0, n=2) | 15.00% | 1.50 | 0 + 0 | 0.000 | 0.100 | 0.160 |" in md
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


# --------------------------------------------------------------------------------------------
# Every mode end to end: real llama.cpp models, a real cloud on loopback


TINY = [E.Example("What is 2 + 3? Give only the number.", "5"),
        E.Example("What is 10 - 4? Give only the number.", "6"),
        E.Example("What is 3 * 3? Give only the number.", "9")]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def evaluator(smollm2_path):
    """SmolLM2-135M as both SLM and LLM (the default pair is built by its own tests), a real cloud."""
    with E.local_cloud(smollm2_path) as target, \
            E.Evaluator(cloud_target=target, grader=E.make_grader("math"), max_tokens=MAX_TOKENS,
                        prompt=lambda q: f"Question: {q}\nAnswer:", progress=False) as ev:
        yield ev


class RecordingRouter:
    """Wraps a router and keeps every step it saw with its decision."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def decide(self, step):
        n = self.inner.decide(step)
        self.seen.append((np.array(step.logits, dtype=np.float64), int(step.token), n))
        return n


def test_slm_and_llm_modes(evaluator, smollm2_path):
    slm = evaluator.run_slm(TINY, smollm2_path)
    assert slm.n == 3 and slm.llm_tokens == 0 and slm.calls_per_question == 0
    assert all(r.slm_tokens > 0 and r.response for r in slm.records)
    assert slm.llm_token_ratio == 0.0

    llm = evaluator.run_llm(TINY, smollm2_path)
    assert llm.slm_tokens == 0 and llm.llm_tokens > 0, "the LLM writes every token in llm mode"
    assert llm.llm_token_ratio == 1.0
    assert all(r.calls >= 1 and not r.degraded for r in llm.records)
    # same model, greedy on both sides: the cloud's text is the SLM's own text, up to where one
    # of them ends (the cloud evaluates in other batch shapes: at a near tie with the end of
    # text one may stop and the other write on, as measured: " 3" / " 3\n\nThe answer is: 3")
    for a, b in zip((r.response for r in llm.records), (r.response for r in slm.records)):
        assert a.startswith(b) or b.startswith(a), (a, b)

    q = evaluator.run_query(slm, llm, share=2 / 3)
    assert sorted(r.routed_to for r in q.records) == ["llm", "llm", "slm"]
    assert 0 < q.llm_token_ratio < 1


def test_random_mode_hands_the_llm_about_p(evaluator, smollm2_path):
    run = evaluator.run_random(TINY, smollm2_path, p=0.3)
    assert run.mode == "random" and run.setting == 0.3
    assert run.llm_tokens > 0 and run.slm_tokens > 0
    # one LLM token per call (run=1), but for a last call where the LLM wrote the end of text
    assert all(r.llm_tokens in (r.calls, r.calls - 1) for r in run.records)
    assert 0.05 < run.llm_token_ratio < 0.6
    again = evaluator.run_random(TINY, smollm2_path, p=0.3)
    assert [r.llm_tokens for r in again.records] == [r.llm_tokens for r in run.records]  # seeded


def test_confidence_router_fires_exactly_below_threshold_on_the_models_logits(evaluator, smollm2_path):
    from llama_cpp import Llama

    from relayllm.edge.routers import ConfidenceRouter

    router = RecordingRouter(ConfidenceRouter(0.5))
    dec = evaluator.decoder(smollm2_path, cloud=True, router=router, max_calls=MAX_TOKENS)
    prompt = evaluator.prompt(TINY[0].question)
    result = dec.generate(prompt)
    assert router.seen, "the router was asked"
    fired = [n > 0 for _, _, n in router.seen]
    for logits, token, n in router.seen:
        assert (n > 0) == (top_probability(logits) < 0.5)
        assert token == int(np.argmax(logits))  # greedy: the candidate is the logits' own argmax
    assert result.calls == sum(fired)
    # the first step's logits are the model's own logits after the prompt
    ref = Llama(model_path=str(smollm2_path), n_ctx=512, logits_all=True, verbose=False)
    ref.eval(ref.tokenize(prompt.encode(), add_bos=True, special=True))
    own = np.array(ref.scores[ref.n_tokens - 1], dtype=np.float64)
    np.testing.assert_allclose(router.seen[0][0], own, rtol=1e-3, atol=1e-3)

    run = evaluator.run_confidence(TINY, smollm2_path, threshold=0.5)
    assert run.setting_name == "threshold"
    assert all(r.llm_tokens in (r.calls, r.calls - 1) for r in run.records)  # the last may end the text


@pytest.fixture(scope="module")
def calling(tmp_path_factory):
    """A relay SLM that really writes `<call>2</call>` (a crafted bigram Llama, tests/relay_models.py),
    its LLM served by a real cloud on loopback, and an Evaluator on them: SmolLM2 has no `<call>`
    token, so a relay run on it could not see a call."""
    import relay_models as rm

    slm, llm = rm.calling_pair_gguf(tmp_path_factory.mktemp("calling"))
    with E.local_cloud(llm) as target, \
            E.Evaluator(cloud_target=target, grader=E.make_grader("exact"), max_tokens=MAX_TOKENS,
                        progress=False) as ev:  # the built-in task's grader: "...#8" answers 8
        yield SimpleNamespace(ev=ev, slm=slm, llm=llm)


# Prompts that end in ":" (what the crafted SLM calls after); its answer is "5;#8", the LLM wrote ";#".
CALLING = [E.Example("1+1:", "8"), E.Example("2+6:", "8"), E.Example("9-1:", "8")]


def test_relay_mode_counts_calls_and_writes_outputs(calling, tmp_path):
    result = calling.ev.decoder(calling.slm, cloud=True).generate("1+1:")
    assert result.spans == [("slm", "5"), ("llm", ";#"), ("slm", "8")], "the LLM wrote the middle of the answer"
    run = calling.ev.run_relay(CALLING, calling.slm, call_threshold=None)  # its own commands only
    assert run.n == 3 and all(not r.degraded for r in run.records)
    # every answer called the cloud once, for the 2 tokens the SLM asked for, and is right with them
    assert [(r.calls, r.llm_tokens, r.response, r.correct) for r in run.records] == [(1, 2, "5;#8", True)] * 3
    assert all(r.cloud_generated == 2 and r.cloud_s > 0 for r in run.records), "the cloud's own usage"
    assert run.llm_tokens == 6 and run.calls_per_question == 1.0 and run.accuracy == 1.0
    assert run.llm_token_ratio == pytest.approx(E.llm_token_ratio(run.records)) == pytest.approx(6 / (6 + 15))
    # the same SLM alone: it writes its command, no cloud answers, the LLM's tokens are missing
    alone = calling.ev.run_slm(CALLING, calling.slm)
    assert alone.llm_tokens == 0 and alone.accuracy == 0.0
    E.write_mode_json(tmp_path, "relay", [run])
    E.write_report(tmp_path)
    saved = json.loads((tmp_path / "relay.json").read_text())["runs"][0]
    assert saved["accuracy"] == run.accuracy and saved["tokens"] == run.tokens
    assert [r["response"] for r in saved["records"]] == [r.response for r in run.records]
    assert (tmp_path / E.PLOT_FILE).is_file() and "| relay |" in (tmp_path / E.TABLE_FILE).read_text()


def test_eval_cli_runs_modes_into_one_folder(smollm2_path, tmp_path, capsys):
    from relayllm.protos.cli import main

    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps({"question": e.question, "answer": e.answer}) + "\n" for e in TINY))
    out = tmp_path / "out"
    common = ["--data", str(data), "--slm", str(smollm2_path), "--llm", str(smollm2_path), "--limit", "2",
              "--max-tokens", "16", "--out", str(out), "--no-progress"]
    assert main(["eval", "--mode", "slm", *common]) == 0
    assert main(["eval", "--mode", "random", "--ratio", "0.2", "0.5", *common]) == 0
    assert "random p=0.5" in capsys.readouterr().out
    labels = [r.label for r in E.read_runs(out)]
    assert labels == ["slm", "random p=0.2", "random p=0.5"]
    assert "| random p=0.2 |" in (out / E.TABLE_FILE).read_text()
    # readable errors, exit status 2
    assert main(["eval", "--mode", "random", *common]) == 2  # no --ratio and no relay run to match
    assert "run --mode relay first" in capsys.readouterr().err
    assert main(["eval", "--mode", "slm", "--data", str(tmp_path / "nope.jsonl"), "--slm", str(smollm2_path),
                 "--out", str(out)]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_a_drop_mode_slm_without_its_cloud_drops_the_command_and_writes_on(calling):
    """Offline, or with no call left, a command no one answers leaves a drop-trained SLM's
    context, and `<call>` is not sampled again in that answer: shown its own command, the
    shipped relay SLM repeated `1</call>` to the token limit (docs/results/gsm8k: 23 of 50
    answers of the relay SLM with calls off)."""
    from relayllm.edge.config import Limits
    from relayllm.edge.decoder import RelayDecoder

    with E.local_cloud(calling.llm) as target:
        from relayllm.edge.client import CloudClient

        cases = {"offline": RelayDecoder(calling.slm, command_context="drop", limits=Limits(max_tokens=8)),
                 "no call left": RelayDecoder(calling.slm, cloud=CloudClient(target), command_context="drop",
                                              limits=Limits(max_calls=0, max_tokens=8))}
        for name, decoder in cases.items():
            result = decoder.generate("1+1:")
            held = [int(t) for t in decoder.slm.input_ids[: decoder.slm.n_tokens]]
            assert decoder.call_open_id not in held, f"{name}: the unanswered command stayed in the context"
            assert result.calls == 0 and result.text.startswith("5"), (name, result.text)
            # the context holds the prompt and what the SLM wrote, less the command's 3 tokens
            assert len(held) == len(decoder.vocab.text("1+1:")) + result.slm_tokens - 3, name


def test_the_local_cloud_is_relayllm_serve_in_a_process_of_its_own(smollm2_path, tmp_path, monkeypatch):
    """The evaluation's cloud runs apart from the SLM's llama.cpp, ignores the user's `relayllm
    serve` settings from the environment (here tokens and a port that would break it), stops
    with its block, and a model it cannot load is one readable error."""
    import os

    from relayllm.edge.client import CloudClient

    monkeypatch.setenv("RELAYLLM_TOKENS", "secret:team")
    monkeypatch.setenv("RELAYLLM_PORT", "1")
    cloud = E.local_cloud(smollm2_path)
    with cloud as target:
        process = cloud._process
        assert process.pid != os.getpid() and process.poll() is None
        with CloudClient(target, deadline_s=60) as client:  # no token: the server asks for none
            assert client.info().backend == "llama.cpp-contexts"
            assert "".join(p.text for p in client.session().help(text="The capital of France is", max_tokens=3))
    assert process.poll() is not None  # stopped with the block
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(E.EvalError, match="did not start"):
        with E.local_cloud(broken):
            pass

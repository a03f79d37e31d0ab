"""`relayllm bench` in miniature: it runs end to end on the real engines and writes JSON with
every figure beside its peer. No timing thresholds: only counts and structure are checked
(tokens prefilled, bytes sent, errors), which a broken bench or a broken cloud would change."""

from __future__ import annotations

import json
import math

import pytest

from relayllm.training.bench import cli as bench


@pytest.fixture(scope="module")
def mini_result(smollm2_path, tmp_path_factory):
    cfg = bench.config(quick=True)
    cfg.update(slm=str(smollm2_path), llm=str(smollm2_path), rounds=1, decode_tokens=24, splice_tokens=[8],
               footprint_tokens=8, calls=3, call_tokens=4, levels=[1, 3], load_calls=2, load_tokens=6,
               anchor_tokens=4, sweep_models={"SmolLM2-135M": str(smollm2_path)}, sweep_skipped="",
               gemma3=False, edge_sync_calls=2, endpoint_tokens=24, endpoint_rounds=2,
               turn_tokens=8, sweep_rounds={"SmolLM2-135M": 2})
    result = bench.bench(cfg, progress=lambda msg: None)
    path = bench.write_results(result, tmp_path_factory.mktemp("bench"))
    return json.loads(path.read_text())


def _figure(result, prefix):
    found = [f for f in result["figures"] if f["name"].startswith(prefix)]
    assert found, f"no figure named {prefix!r}; have {[f['name'] for f in result['figures']]}"
    return found[0]


def test_every_figure_has_a_peer_and_sane_values(mini_result):
    assert mini_result["figures"]
    for f in mini_result["figures"]:
        assert set(f) >= {"group", "name", "value", "unit", "peer_name", "peer_value", "ratio", "goal", "met"}
        assert f["peer_name"], f
        assert math.isfinite(f["value"]) and f["value"] >= 0, f
        assert f["peer_value"] is not None and math.isfinite(f["peer_value"]) and f["peer_value"] >= 0, f
        assert f["ratio"] is None or f["ratio"] == pytest.approx(f["value"] / f["peer_value"]), f  # as printed
        assert f["ratio_how"] == "value / peer value"
    from relayllm.training.bench.edge import machine

    here = machine()  # read from the machine, not written down
    assert mini_result["machine"]["gpu"] == here["gpu"] and mini_result["machine"]["cpu_model"] == here["cpu_model"]
    assert mini_result["machine"]["cpu_count"] == here["cpu_count"] > 0
    assert mini_result["table"].count("\n") >= len(mini_result["figures"])


def test_the_gpu_line_is_read_from_the_machine(tmp_path, monkeypatch):
    """No nvidia-smi: says so; an nvidia-smi that lists a GPU: that GPU (a script standing in
    for the driver's tool, since this machine has none); a failing one: no GPU."""
    from relayllm.training.bench.edge import machine

    monkeypatch.setenv("PATH", str(tmp_path))
    assert machine()["gpu"].startswith("no GPU found")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 143771 MiB'\n")
    smi.chmod(0o755)
    assert machine()["gpu"] == "NVIDIA H200, 143771 MiB"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert machine()["gpu"].startswith("no GPU found")


def test_llama_cpp_baselines(mini_result):
    edge = mini_result["edge"]
    assert edge["decode"]["llama_cpp"]["tokens"] == 24  # greedy, no EOS within 24 tokens
    assert edge["decode"]["llama_cpp"]["decode_tok_s"] > 0
    splice = edge["splice"]
    row = splice["by_tokens"]["8"]
    assert row["sdk_s"] > 0 and row["reeval_s"] > 0
    assert row["evaluated_sdk"] == 8 and row["evaluated_reeval"] == splice["prefix_tokens"] + 8
    raw = edge["footprint"]["SmolLM2-135M"]["llama.cpp"]
    assert "error" not in raw, raw
    assert raw["tokens"] == 8
    # The weights are mapped and touched: the process holds at least most of the file.
    assert raw["rss_peak_mib"] > 0.5 * raw["model_file_mib"]
    assert raw["rss_after_load_mib"] > raw["rss_after_import_mib"]


def test_edge_sdk_decodes_like_llama_cpp(mini_result):
    decode = mini_result["edge"]["decode"]
    assert "sdk" in decode, mini_result["not_measured"]
    assert decode["sdk"]["tokens"] == decode["llama_cpp"]["tokens"] == 24  # same greedy run, same length
    assert decode["same_token_count"]
    assert decode["decode_ratio"] > 0
    sdk = mini_result["edge"]["footprint"]["SmolLM2-135M"]["sdk"]
    assert "error" not in sdk, sdk
    assert sdk["rss_peak_mib"] > 0.5 * sdk["model_file_mib"]
    assert "sdk_us_per_token" in mini_result["edge"]["detection"], mini_result["not_measured"]


def test_endpoint_and_sdk_write_the_same_tokens(mini_result):
    """`relayllm local` over HTTP and the SDK in process: both write exactly the tokens asked
    for, in every round, and the figure is their tokens/s side by side."""
    e = mini_result["local"]["endpoint"]
    assert "error" not in mini_result["local"], mini_result["local"]
    assert e["sdk_tokens"] == e["endpoint_tokens"] == [24] * e["rounds"]
    assert e["omp_wait_policy"]
    for side in ("sdk", "endpoint"):
        assert math.isfinite(e[f"{side}_tok_s"]) and e[f"{side}_tok_s"] > 0
        assert 0 < e[f"{side}_ttft_s"] < 24 / e[f"{side}_tok_s"]  # the first token comes before the last
    assert math.isfinite(e["paired_ratio"]) and e["paired_ratio"] > 0
    f = _figure(mini_result, "tok/s, `relayllm local`")
    assert (f["value"], f["peer_value"], f["goal"]) == (e["endpoint_tok_s"], e["sdk_tok_s"], ">= 0.95")
    assert f["met"] == (f["ratio"] >= 0.95)


def test_turn_two_evaluates_only_its_new_tokens(mini_result, smollm2_path):
    """Turn two with the KV kept evaluates the tokens after what turn one left in the cache;
    re-evaluating evaluates the whole conversation, every token of it."""
    from relayllm.edge import RelayDecoder
    from relayllm.training.bench.edge import open_llama
    from relayllm.training.bench.edge_local import TURNS

    t = mini_result["local"]["turn_two"]
    assert t["counts_same_every_round"]
    assert t["evaluated_reeval"] == t["reeval_prompt_tokens"] == t["prompt_tokens"]
    reused = t["prompt_tokens"] - t["evaluated_kept"]
    # turn one's prompt is reused whole, at most what turn one left in the KV (its prompt + reply)
    assert t["turn_one_prompt_tokens"] < reused <= t["turn_one_kv_tokens"] == t["turn_one_prompt_tokens"] + 8
    new_text = RelayDecoder(open_llama(smollm2_path)).vocab.text(TURNS[1])
    assert len(new_text) < t["evaluated_kept"] < t["evaluated_reeval"]  # the new turn, its markers, not more
    for row in t["per_round"]:
        assert row["reply_tokens_kept"] == row["reply_tokens_reeval"] == 8
        assert row["turn_s_kept"] > 0 and row["turn_s_reeval"] > 0
    f = _figure(mini_result, "turn two: prompt tokens evaluated")
    assert (f["value"], f["peer_value"]) == (t["evaluated_kept"], t["evaluated_reeval"])
    assert _figure(mini_result, "turn two wall time")["peer_value"] == pytest.approx(t["turn_s_reeval"] * 1e3)


def test_session_reuse_prefills_only_the_delta(mini_result):
    assert "error" not in mini_result["cloud"], mini_result["cloud"]["error"]
    r = mini_result["cloud"]["reuse_vs_resend"]
    for row in r["per_call"][1:]:
        s, full = row["session"], row["resend"]
        assert s["prefilled_tokens"] < full["prefilled_tokens"]
        assert s["reused_tokens"] > 0 and full["reused_tokens"] == 0
        assert s["request_bytes"] < full["request_bytes"]
        assert s["generated_tokens"] == full["generated_tokens"] == 4
    # The resent prefix grows call by call; the delta does not.
    resent = [row["resend"]["prefilled_tokens"] for row in r["per_call"]]
    assert resent == sorted(resent) and resent[-1] > resent[0]


def test_synced_call_prefills_nothing(mini_result):
    s = mini_result["cloud"]["sync"]
    for row in s["per_call"]:
        assert row["synced"]["prefilled_tokens"] <= 1  # all was synced before the call
        assert row["cold"]["prefilled_tokens"] > row["synced"]["prefilled_tokens"]


def test_cloud_sweep_against_llama_cpp_batched_decode(mini_result):
    """The sweep: the anchor (llama.cpp's own batched decode) and the cloud at every level,
    the clients in another process, every call writing all its tokens; the figures divide
    the cloud by the anchor at the same level."""
    sweep = mini_result["cloud"]["sweep"]
    m = sweep["models"]["SmolLM2-135M"]
    assert [r["sequences"] for r in m["anchor"]] == [r["sessions"] for r in m["cloud"]] == [1, 3]
    for a in m["anchor"]:
        assert a["decode_tok_s"] > 0 and a["prefill_tok_s"] > 0 and a["decode_tokens"] == 4
    for row in m["cloud"]:
        assert row["errors"] == 0 and row["resends"] == 0
        assert row["requests"] == row["sessions"] * 2
        assert row["generated_tokens"] == row["requests"] * 6  # the count goes on: no EOS
        assert row["decode_tokens_per_step"] > 0 and row["prefill_tokens"] > 0
        assert row["latency_p50_s"] <= row["latency_p95_s"]
        assert row["vs_anchor"] == pytest.approx(row["decode_tok_s"] / m["anchor"][m["cloud"].index(row)]["decode_tok_s"])
    # one forward pass per run of consecutive sequence ids (a KV stream per sequence), so one per
    # step unless a session ended before its neighbours
    assert m["passes"]["passes_per_id_run"] == 1.0
    assert 1.0 <= m["passes"]["passes_per_decode_step"] <= 2.0
    f = _figure(mini_result, "SmolLM2-135M, 3 sessions: cloud decode tok/s")
    assert f["peer_name"] == "llama.cpp batched decode, 3 seq" and f["goal"] == ">= 0.8"
    assert "| SmolLM2-135M | 3 |" in mini_result["cloud"]["sweep_table"]
    # two rounds, anchor and cloud alternating: each level shows the lower-middle round's pair
    assert m["rounds"] == 2
    for row in m["cloud"]:
        assert len(row["vs_anchor_rounds"]) == 2 and row["vs_anchor"] == min(row["vs_anchor_rounds"])


def test_the_sweep_shows_the_median_round_side_by_side():
    """Per level, the anchor and cloud rows of one round (the one with the median ratio), not
    the median anchor of one round beside the median cloud of another."""
    from relayllm.training.bench.cloud_vs_anchor import median_rounds

    def rounds(anchor_tok_s, cloud_tok_s, levels=(1, 4, 64)):
        return ([{"sequences": n, "decode_tok_s": a, "step_s": 1 / a} for n, a in zip(levels, anchor_tok_s)],
                [{"sessions": n, "decode_tok_s": c, "latency_p95_s": 64 * n / c} for n, c in zip(levels, cloud_tok_s)])

    measured = [rounds([100, 200, 250], [70, 190, 200]),   # ratios 0.70, 0.95, 0.80
                rounds([140, 180], [126, 162], (1, 4)),    # 0.90, 0.90 (a later round: no 64 level)
                rounds([120, 210], [96, 210], (1, 4))]     # 0.80, 1.00
    anchors, clouds = median_rounds(measured)
    assert [c["vs_anchor"] for c in clouds] == pytest.approx([0.80, 0.95, 0.80])
    assert [a["decode_tok_s"] for a in anchors] == [120, 200, 250] and [c["decode_tok_s"] for c in clouds] == [96, 190, 200]
    assert [c["round"] for c in clouds] == [3, 1, 1]
    assert clouds[0]["vs_anchor_rounds"] == pytest.approx([0.70, 0.90, 0.80])
    assert clouds[2]["vs_anchor_rounds"] == pytest.approx([0.80])
    assert anchors[1]["vs_1"] == pytest.approx(200 / 120)
    assert clouds[1]["tok_s_vs_1"] == pytest.approx(190 / 96)  # between the rows shown
    assert clouds[1]["p95_vs_1"] == pytest.approx((64 * 4 / 190) / (64 / 96))
    # one level past the later rounds' levels: one round, and nothing to take a median of
    anchors, clouds = median_rounds([rounds([250], [200], (64,))])
    assert clouds[0]["vs_anchor_rounds"] == pytest.approx([0.80]) and clouds[0]["round"] == 1


def test_cli_refuses_a_missing_model(tmp_path, capsys):
    from relayllm.protos.cli import main

    assert main(["bench", "--only", "edge", "--slm", str(tmp_path / "nope.gguf"), "--out", str(tmp_path)]) == 2
    assert "no such GGUF file" in capsys.readouterr().err


def test_cloud_scale_section_measures_every_backend_at_every_level(smollm2_path):
    cfg = bench.config(quick=True)
    cfg.update(llm=str(smollm2_path), levels=[1, 2], load_calls=1, load_tokens=3, threads=1)
    result = bench.bench(cfg, only="cloud-scale", progress=lambda msg: None)
    scale = result["cloud_scale"]
    assert len(scale["backends"]) == 3 and any(name.startswith("openai-gateway -> ") for name in scale["backends"])
    for rows in scale["backends"].values():
        assert [r["sessions"] for r in rows] == [1, 2] and all(r["errors"] == 0 for r in rows)
    names = [f["name"] for f in result["figures"]]
    assert sum(name.endswith("2 sessions: generated tok/s") for name in names) == 3
    gateway = next(f for f in result["figures"] if f["name"] == "Help through the gateway (median)")
    assert gateway["ratio"] > 0 and gateway["goal"] == "<= 1.1"


def test_the_last_line_says_each_groups_time(mini_result):
    """The default run has 10 minutes: its last line says where they went; a run of one group
    on request (pair) has no group times and says nothing more."""
    line = bench._group_times(mini_result)
    assert line.startswith(" (edge ") and ", local " in line and ", cloud " in line and "(sweep: SmolLM2-135M " in line
    assert bench._group_times({"group_s": {}, "pair": {}}) == ""

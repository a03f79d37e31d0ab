"""`relayllm demo` on a miniature configuration: settings chosen on validation, the table on
test, every mode, the headline figures, the results folder and summary.json."""

from __future__ import annotations

import json
from types import SimpleNamespace

from relayllm.training import demo
from relayllm.training import eval as E


def test_demo_chooses_on_validation_reports_test_and_writes_the_results_folder(smollm2_path, tmp_path):
    import relay_models as rm
    from relayllm.training.routers.onnx_export import untrained_router_for

    # SmolLM2 plays the SLM and the LLM, and an untrained router of its size both learned routers:
    # the demo's plumbing is under test, not the trained pair (tests/test_defaults.py builds routers).
    # The relay SLM must really call, which SmolLM2 (no `<call>` token) cannot: a crafted bigram
    # Llama that writes `<call>2</call>` after the task's "...:" and "5" (tests/relay_models.py);
    # its tokenizer has the two command tokens, SmolLM2's not, so the edge sends the cloud text.
    relay_slm, _ = rm.calling_pair_gguf(tmp_path / "calling")
    router = untrained_router_for(smollm2_path, tmp_path / "router" / "router.onnx")
    models = SimpleNamespace(llm=smollm2_path, slm=smollm2_path, relay_slm=relay_slm, r2r_router=router,
                             citer_router=router)
    out = tmp_path / "out"
    summary = demo.run_all_modes(models, out, validation=2, test=3, random_p=(0.2, 0.5), thresholds=(0.5, 0.9),
                                 query_shares=(0.5,), router_thresholds=(0.5,), max_tokens=12, progress=False,
                                 relay_settings=(None,), pair=False)
    modes = [r["mode"] for r in summary["runs"]]
    for mode in E.MODES:
        assert mode in modes
        assert (out / f"{mode}.json").is_file() and (out / "validation" / f"{mode}.json").is_file()
    assert (out / E.TABLE_FILE).is_file() and (out / E.PLOT_FILE).is_file() and (out / E.COMPUTE_PLOT_FILE).is_file()
    # the table is test, the choice validation: sizes, and the questions themselves
    assert all(r["n"] == 3 for r in summary["runs"]) and all(r["n"] == 2 for r in summary["validation_runs"])
    test_q = {x["question"] for r in json.loads((out / "confidence.json").read_text())["runs"] for x in r["records"]}
    val_q = {x["question"] for r in json.loads((out / "validation" / "confidence.json").read_text())["runs"]
             for x in r["records"]}
    assert test_q and val_q and not test_q & val_q
    val_conf = {r["setting"]: r for r in summary["validation_runs"] if r["mode"] == "confidence"}
    choice = summary["choices"]["confidence"]
    assert choice["validation_accuracy"] == val_conf[choice["setting"]]["accuracy"]
    assert choice == E.choose([E.ModeRun.from_dict(r) for r in json.loads(
        (out / "validation" / "confidence.json").read_text())["runs"]], summary["ratio_cap"]).to_dict()
    row = next(r for r in summary["rows"] if r["mode"] == "confidence")
    assert row["setting"] == choice["setting"] and row["n"] == 3
    # "(chosen)" only where the rule chose among settings under the cap, never where it was forced
    for mode, c in summary["choices"].items():
        shown = next(r for r in summary["rows"] if r["mode"] == mode)["row"]
        chose = c["tried"] >= 2 and c["admissible"] >= 1
        assert ("(chosen)" in shown) == chose, (mode, c, shown)
    query = next(r for r in summary["rows"] if r["mode"] == "query")
    assert query["row"].startswith("random query split")
    # the relay row comes from an SLM that called: every test answer asked the cloud, which wrote
    relay = json.loads((out / "relay.json").read_text())["runs"][0]["records"]
    assert len(relay) == 3 and all(r["calls"] >= 1 and r["llm_tokens"] >= 1 and r["cloud_generated"] >= 1
                                   for r in relay), relay
    by_mode = {r["mode"]: r for r in summary["rows"]}
    assert by_mode["relay"]["llm_token_ratio"] > 0 and by_mode["relay"]["calls_per_question"] >= 1
    # every figure of the table, machine-readable
    for key in ("commit", "machine", "splits", "pair", "rule", "choices", "rows", "runs", "validation_runs",
                "gap_recovered", "cost_saved_vs_random", "link_rtt_s", "eval_s"):
        assert key in summary
    assert summary["machine"]["cores"] >= 1 and summary["splits"]["test"] == 3
    for r in summary["rows"]:
        for key in ("accuracy", "accuracy_ci95", "n", "llm_token_ratio", "cloud_prefilled_per_answer",
                    "cloud_generated_per_answer", "cloud_s_per_answer", "cloud_s_vs_llm", "device_s_per_answer",
                    "wall_with_link_s_per_answer", "wall_with_link_vs_llm"):
            assert key in r
        low, high = r["accuracy_ci95"]
        assert low <= r["accuracy"] <= high
    by = {r["mode"]: r for r in summary["rows"]}
    assert by["slm"]["llm_token_ratio"] == 0.0 and by["llm"]["llm_token_ratio"] == 1.0
    assert by["llm"]["cloud_s_vs_llm"] == 1.0 and by["slm"]["cloud_s_per_answer"] == 0.0
    # the headline figures follow from the runs
    gap = E.gap_recovered(by["slm"]["accuracy"], by["relay"]["accuracy"], by["llm"]["accuracy"])
    assert summary["gap_recovered"] == gap
    assert "gap recovered" in summary["headline"] and "saved vs the random router" in summary["headline"]
    md = (out / E.TABLE_FILE).read_text()
    assert summary["headline"].splitlines()[0] in md
    for r in summary["rows"]:
        assert f"| {r['row']} | {E.fmt_accuracy(r['correct'], r['n'])} |" in md
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]

"""`relayllm demo` on a miniature configuration: every mode, the headline figures, the results folder."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from relayllm.training import demo
from relayllm.training import eval as E


def test_demo_runs_every_mode_and_writes_the_results_folder(smollm2_path, tmp_path):
    from relayllm.training.routers.onnx_export import untrained_router_for

    # SmolLM2 plays all three parts and an untrained router of its size both learned routers:
    # the demo's plumbing is under test, not the trained pair (tests/test_defaults.py builds routers).
    router = untrained_router_for(smollm2_path, tmp_path / "router" / "router.onnx")
    models = SimpleNamespace(llm=smollm2_path, slm=smollm2_path, relay_slm=smollm2_path, r2r_router=router,
                             citer_router=router)
    summary = demo.run_all_modes(models, tmp_path, limit=2, random_p=(0.2,), thresholds=(0.5,),
                                 query_shares=(0.5,), router_thresholds=(0.5,), max_tokens=16, progress=False,
                                 relay_call_threshold=None)  # SmolLM2 has no `<call>` token
    modes = [r["mode"] for r in summary["runs"]]
    for mode in E.MODES:
        assert mode in modes
        assert (tmp_path / f"{mode}.json").is_file()
    assert (tmp_path / E.TABLE_FILE).is_file() and (tmp_path / E.PLOT_FILE).is_file()
    by = {r["mode"]: r for r in summary["runs"]}
    assert by["slm"]["llm_token_ratio"] == 0.0 and by["llm"]["llm_token_ratio"] == 1.0
    # the headline figures follow from the runs
    gap = E.gap_recovered(by["slm"]["accuracy"], by["relay"]["accuracy"], by["llm"]["accuracy"])
    assert summary["gap_recovered"] == gap
    assert "gap recovered" in summary["headline"] and "cost saved" in summary["headline"]
    md = (tmp_path / E.TABLE_FILE).read_text()
    assert summary["headline"].splitlines()[0] in md
    for r in summary["runs"]:
        label = E.ModeRun(r["mode"], r["setting"], [], 0.0, r["setting_name"]).label
        assert f"| {label} | {r['accuracy']:.1%}" in md

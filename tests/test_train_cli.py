"""`relayllm train`: readable errors for bad configs and paths, no heavy import at module
import, and one tiny warm-up -> GRPO -> GGUF chain from a TOML config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import relay_models as rm

from relayllm.protos.cli import main


def test_module_import_is_light():
    code = "import sys, relayllm.training.relay.cli; print(any(m in sys.modules for m in ('torch', 'transformers', 'trl')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("content, argv_extra, message", [
    (None, [], "config file not found"),
    ("{bad", [], "cannot read config"),
    ('{"out": "o", "grpo": {"stepz": 3}}', ["grpo"], "unknown key(s) in [grpo]: stepz"),
    ('{"slm": "x"}', [], "no output folder"),
    ('{"out": "o", "slm": "/nonexistent/slm", "llm": "/nonexistent/llm"}', [], "no config.json"),
    ('{"out": "o", "grpo": {"steps": "five"}}', ["grpo"], "[grpo] steps: expected int, got 'five'"),
    ('{"out": "o", "warmup": {"call_below": true}}', [], "[warmup] call_below: expected float, got True"),
    ('{"out": "o", "grpo": {"group_size": 1}}', ["grpo"], "group_size must be at least 2"),
    ('{"out": "o", "warmup": {"strategy": "nope"}}', [], "strategy must be one of"),
    ('{"out": "o", "export": {"quants": ["q3"]}}', ["export"], "unknown quantization(s) ['q3']"),
    ('{"out": "o", "sln": "x"}', [], "unknown key(s) at the top: sln"),
    ('{"out": "o", "data": "/nonexistent/d.jsonl"}', [], "data: no such file"),
])
def test_bad_configs_give_readable_errors(tmp_path, capsys, content, argv_extra, message):
    cfg = tmp_path / "cfg.json"
    if content is not None:
        cfg.write_text(content)
    stage = argv_extra or ["warmup"]
    assert main(["train", *stage, "--config", str(cfg)]) == 2
    assert message in capsys.readouterr().err


def test_show_config_lists_every_key_with_its_help(capsys):
    from relayllm.training.relay.config import GrpoConfig, WarmupConfig, train_config_from_dict

    assert main(["train", "--show-config"]) == 0
    text = capsys.readouterr().out
    assert "[grpo]" in text and "group_size = 8    # rollouts per question" in text
    assert train_config_from_dict({"grpo": {"steps": 3}}).grpo == GrpoConfig(steps=3)
    assert train_config_from_dict({}).warmup == WarmupConfig()


def test_bad_override(tmp_path, capsys):
    assert main(["train", "grpo", "--out", str(tmp_path), "--set", "nosuch.steps=3"]) == 2
    assert "unknown section" in capsys.readouterr().err


def test_all_stages_from_a_toml_config(tmp_path, capsys):
    slm, llm = rm.save_pair(tmp_path, rm.SLM_DIVERGING)
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
slm = "{slm}"
llm = "{llm}"
out = "{tmp_path / 'run'}"
[warmup]
rows = [{{prompt = "{rm.PROMPT}", answer = "{rm.ANSWER}"}}, {{prompt = "{rm.PROMPT}", answer = "{rm.ANSWER}"}}]
n_call = 2
call_below = 0.0
steps = 1
batch_size = 2
[grpo]
rows = [{{prompt = "{rm.PROMPT}", answer = "{rm.ANSWER}"}}]
steps = 1
group_size = 2
prompts_per_step = 1
max_tokens = 12
[export]
name = "relay"
quants = ["q8_0"]
""")
    assert main(["train", "all", "--config", str(cfg), "--no-progress", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    # two answers, each with its command inline (the paper's protocol: commands stay in context)
    assert "warm-up: 2 examples, 2 commands" in out
    assert "grpo step 1: reward" in out
    run = tmp_path / "run"
    assert json.loads((run / "grpo" / "grpo_done.json").read_text())["steps"] == 1
    assert (run / "gguf" / "relay-q8_0.gguf").stat().st_size > 0
    # the GGUF keeps the command tokens single
    from relayllm.training.models import export

    trip = export.roundtrip_tokens(run / "gguf" / "relay-q8_0.gguf", run / "grpo", "5<call>2</call>;")
    assert trip["gguf"] == trip["hf"] and trip["gguf_text"] == "5<call>2</call>;"

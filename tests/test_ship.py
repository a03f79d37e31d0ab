"""The shipped relay SLM: its adapter matches its manifest, and the manifest the recipe.

A LoRA warm-up on the crafted bigram pair stands in for the real run (same code path, seconds
instead of an hour); the committed artifact is checked as it is."""

from __future__ import annotations

import json

import pytest
import relay_models as rm

from relayllm.training.relay import ship, warmup


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("ship")
    slm_dir, llm_dir = rm.save_pair(root, rm.SLM_DIVERGING)
    warmup.run_warmup(slm_dir, llm_dir, root / "run" / "warmup", rows=[{"prompt": rm.PROMPT, "answer": rm.ANSWER}] * 4,
                      n_call=2, steps=1, batch_size=4, lr=1e-2, lora_r=2, lora_alpha=4, progress=False)
    recipe = root / "recipe.toml"
    recipe.write_text('slm = "x"\n[warmup]\nlora_r = 2\n')
    folder = ship.package(root / "run", folder=root / "shipped", recipe=recipe, validation={"relay": 0.5})
    return folder, recipe


def test_a_packaged_adapter_matches_its_manifest(packaged):
    folder, recipe = packaged
    assert ship.check(folder, recipe) == []
    m = ship.manifest(folder)
    assert m["steps"] == 1 and m["validation"] == {"relay": 0.5} and set(m["files"]) == set(ship.ADAPTER_FILES)
    assert m["command_context"] == "keep" and "ship package" in m["rebuild"]


def test_a_changed_recipe_or_adapter_makes_the_shipped_artifact_stale(packaged, tmp_path):
    folder, recipe = packaged
    changed = tmp_path / "recipe.toml"
    changed.write_text(recipe.read_text().replace("lora_r = 2", "lora_r = 4"))
    [problem] = ship.check(folder, changed)
    assert "recipe" in problem and "retrain" in problem
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (*ship.ADAPTER_FILES, ship.MANIFEST):
        (copy / name).write_bytes((folder / name).read_bytes())
    cfg = json.loads((copy / "adapter_config.json").read_text())
    cfg["r"] = 3
    (copy / "adapter_config.json").write_text(json.dumps(cfg))
    assert ship.check(copy, recipe) == ["adapter_config.json is not the file the manifest names"]


@pytest.mark.skipif(not (ship.SHIPPED / ship.MANIFEST).is_file(), reason="no relay adapter is committed")
def test_the_committed_relay_adapter_matches_its_manifest_and_todays_recipe():
    assert ship.check() == []
    m = ship.manifest()
    assert m["base"] == "qwen2.5-coder-0.5b-instruct" and m["recipe"].endswith(ship.RECIPE.name)


def test_the_gguf_built_from_base_and_adapter_is_the_model_the_warm_up_trained(packaged, tmp_path):
    """What a first `relayllm models pull qwen2.5-coder-0.5b-relay` does (merge in float32,
    convert, quantize as the manifest says), on the tiny pair: the built GGUF chooses what the
    warm-up's own merged checkpoint chooses, position by position."""
    from relayllm.training.models import export

    folder, recipe = packaged
    root = folder.parent
    built = ship.build(tmp_path / "relay.gguf", folder=folder, base=root / "slm", recipe=recipe, progress=False)
    report = export.parity(built, root / "run" / "warmup", [rm.PROMPT + rm.ANSWER, rm.PROMPT])
    assert report.token_mismatches == 0 and report.greedy_agree == report.positions
    assert not list(tmp_path.glob(".build-*"))  # the build's scratch folder is gone
    # it records the command context it was trained for, which the edge then defaults to
    from llama_cpp import Llama

    from relayllm.protos.protocol import COMMAND_CONTEXT_KEY

    llama = Llama(str(built), n_ctx=64, verbose=False)
    assert llama.metadata.get(COMMAND_CONTEXT_KEY) == ship.manifest(folder)["command_context"]


def test_unpack_gives_grpo_the_warm_up_that_was_shipped(packaged, tmp_path):
    """`ship unpack`: the shipped adapter, merged into the base, is a finished warm-up stage
    (the warm-up's own merged weights, its command context), so GRPO starts from it."""
    import torch
    from safetensors.torch import load_file

    from relayllm.training.relay.cli import trained_command_context
    from relayllm.training.relay.config import TrainConfig

    folder, recipe = packaged
    root = folder.parent
    out = ship.unpack(tmp_path / "run", folder=folder, base=root / "slm", recipe=recipe)
    assert (out / warmup.DONE_MARK).is_file() and trained_command_context(out, TrainConfig()) == "keep"
    a, b = load_file(out / "model.safetensors"), load_file(root / "run" / "warmup" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_grpo_adapter_ships_beside_the_warm_ups_and_the_build_merges_both(packaged, tmp_path):
    """GRPO with LoRA on the unpacked warm-up: `package` ships its adapter in grpo/, the
    manifest pins both stages, and the built GGUF chooses what GRPO's merged checkpoint does."""
    from relayllm.training.models import export
    from relayllm.training.relay import grpo

    folder, recipe = packaged
    root = folder.parent
    recipe2 = tmp_path / "recipe.toml"
    recipe2.write_text(recipe.read_text() + "[grpo]\nlora_r = 2\n")
    assert ship.check(folder, recipe2) == []  # a change to GRPO's section leaves a warm-up-only artifact current
    run = tmp_path / "run"
    ship.unpack(run, folder=folder, base=root / "slm", recipe=recipe)
    grpo.run_grpo(run / "warmup", root / "llm", run / "grpo", rows=[{"prompt": rm.PROMPT, "answer": rm.ANSWER}],
                  steps=1, group_size=2, prompts_per_step=1, max_tokens=8, lr=1e-2, lora_r=2, lora_alpha=4,
                  progress=False)
    shipped = ship.package(run, folder=tmp_path / "shipped", recipe=recipe2)
    m = ship.manifest(shipped)
    assert m["stage"] == "grpo" and m["grpo"]["steps"] == 1 and f"{ship.GRPO_DIR}/adapter_model.safetensors" in m["files"]
    assert ship.check(shipped, recipe2) == []
    assert "recipe" in ship.check(shipped, recipe)[0]  # now GRPO's section is part of what it was trained by
    built = ship.build(tmp_path / "relay.gguf", folder=shipped, base=root / "slm", recipe=recipe2, progress=False)
    report = export.parity(built, run / "grpo", [rm.PROMPT + rm.ANSWER, rm.PROMPT])
    assert report.token_mismatches == 0 and report.greedy_agree == report.positions

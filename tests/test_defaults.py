"""default_models(): built once into the cache (under a lock), then reused at once.

The recipe is shrunk to micro models so the build takes seconds; the real build is the
same code with the real configs (relayllm demo runs it).
"""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from relayllm.training.data import task
from relayllm.training.models import defaults, tiny_models

MICRO = tiny_models.TinyConfig(hidden=64, layers=1, heads=2, intermediate=128, steps=20, batch=16)


def _micro(monkeypatch, cache):
    monkeypatch.setenv("RELAYLLM_CACHE", str(cache))
    monkeypatch.setattr(tiny_models, "LLM_CONFIG", MICRO)
    monkeypatch.setattr(tiny_models, "SLM_CONFIG", MICRO)
    held_out = task.test_split()[:20]  # the build's accuracy checks on a few questions (fast on busy cores)
    monkeypatch.setattr(task, "test_split", lambda seed=task.SPLIT_SEED: list(held_out))
    monkeypatch.setattr(defaults, "BUILD_RELAY", False)  # the pair only
    monkeypatch.setattr(defaults, "BUILD_ROUTERS", False)  # (the router tests turn them on)


@pytest.fixture
def micro_recipe(tmp_path, monkeypatch):
    _micro(monkeypatch, tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def built_micro_pair(tmp_path_factory):
    """A cache holding the micro pair, built once for the tests that build on top of it."""
    cache = tmp_path_factory.mktemp("micro-pair")
    with pytest.MonkeyPatch.context() as mp:
        _micro(mp, cache)
        defaults.default_models(progress=False)
    return cache


@pytest.fixture
def micro_pair(built_micro_pair, micro_recipe):
    """micro_recipe with the pair already in its cache (a copy of built_micro_pair)."""
    shutil.copytree(built_micro_pair, micro_recipe, dirs_exist_ok=True)
    return micro_recipe


def test_built_once_then_reused(micro_recipe):
    results = []
    threads = [threading.Thread(target=lambda: results.append(defaults.default_models(progress=False)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = results
    assert first == second  # the waiting caller got the same, finished models
    assert first.root.is_relative_to(micro_recipe / "default-models")
    for path in (first.llm, first.slm):
        assert path.is_file() and path.suffix == ".gguf"
    assert (first.llm_hf / "config.json").is_file() and (first.slm_hf / "tokenizer.json").is_file()
    assert first.relay_slm is None  # no relay training in this recipe
    assert first.r2r_router is None and first.citer_router is None  # nor router training
    assert 0.0 <= first.info["llm"]["test_accuracy"] <= 1.0 and "gguf_test_accuracy" in first.info["slm"]
    stamp = first.llm.stat().st_mtime_ns
    again = defaults.default_models(progress=False)
    assert again == first and again.llm.stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_recipe_hash_follows_the_recipe(micro_recipe, monkeypatch):
    before = defaults.recipe_hash(0)
    assert defaults.recipe_hash(1) != before
    monkeypatch.setattr(tiny_models, "SLM_CONFIG", tiny_models.TinyConfig(steps=1))
    assert defaults.recipe_hash(0) != before


MICRO_ROUTERS = defaults.RouterRecipe(r2r_prompts=3, citer_prompts=4, max_new=8, hidden=8, epochs=2)


def test_token_routers_are_built_into_the_manifest_and_load_on_the_edge(micro_pair, monkeypatch):
    from relayllm.edge.token_router import TokenRouter
    from relayllm.training.routers.citer import train_citer
    from relayllm.training.routers.r2r import train_r2r

    pair = defaults.default_models(progress=False)  # the pair alone (router training off): reused
    assert pair.root.is_relative_to(micro_pair) and pair.r2r_router is None
    monkeypatch.setattr(defaults, "BUILD_ROUTERS", True)
    assert defaults._router_trainers() == (train_r2r, train_citer)
    monkeypatch.setattr(defaults, "ROUTER_RECIPE", MICRO_ROUTERS)
    models = defaults.default_models(progress=False)  # the routers are missing and buildable: built now
    assert models.llm == pair.llm and models.slm == pair.slm  # on top of the same pair, not rebuilt
    assert models.r2r_router == models.root / "routers" / "r2r.onnx"
    assert models.citer_router == models.root / "routers" / "citer.onnx"
    manifest = json.loads((models.root / "manifest.json").read_text())
    assert manifest["r2r_router"] == "routers/r2r.onnx" and manifest["citer_router"] == "routers/citer.onnx"
    info = models.info["routers"]
    assert "error" not in info and info["recipe"]["r2r_prompts"] == 3
    assert info["r2r"]["prompts"] == 3 and info["citer"]["prompts"] == 4
    assert {"precision", "recall"} <= set(info["r2r"]["held_out"]) and "rollouts_saved" in info["citer"]
    assert info["build_s"] > 0 and info["r2r"]["build_s"] > 0
    for path, mode in ((models.r2r_router, "r2r"), (models.citer_router, "citer")):
        assert TokenRouter(path).mode == mode
    # the features are the edge's: the router takes the SLM GGUF's hidden size
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(models.slm), n_ctx=32, embedding=True, verbose=False, n_threads=1)
    assert TokenRouter(models.r2r_router, llama=llama).spec.hidden_size == llama.n_embd()
    llama.close()
    stamp = models.r2r_router.stat().st_mtime_ns
    assert defaults.default_models(progress=False) == models and models.r2r_router.stat().st_mtime_ns == stamp


def test_a_failed_router_build_keeps_the_pair_and_its_error(micro_pair, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no routers today")

    monkeypatch.setattr(defaults, "BUILD_ROUTERS", True)
    monkeypatch.setattr(defaults, "_router_trainers", lambda: (broken, broken))
    monkeypatch.setattr(defaults, "ROUTER_RECIPE", MICRO_ROUTERS)
    models = defaults.default_models(progress=False)
    assert models.slm.is_file() and models.r2r_router is None and models.citer_router is None
    assert models.info["routers"]["error"] == "RuntimeError: no routers today"
    # tried once with this recipe: not retried at every call
    assert not defaults._routers_missing_but_buildable(models.root / "manifest.json")
    monkeypatch.setattr(defaults, "ROUTER_RECIPE", defaults.RouterRecipe(r2r_prompts=2))
    assert defaults._routers_missing_but_buildable(models.root / "manifest.json")  # a new recipe is tried


MICRO_RELAY = dict(
    warmup={"clean_context": True, "n_examples": 8, "steps": 2, "batch_size": 4, "solved_only": False,
            "max_new_tokens": 24, "save_steps": 50},
    grpo={"command_context": "drop", "steps": 1, "group_size": 2, "prompts_per_step": 1, "max_tokens": 16,
          "llm_solvable_only": False, "save_steps": 50})


def test_the_default_relay_slm_is_warm_up_then_grpo_and_follows_its_recipe(micro_pair, monkeypatch):
    from relayllm.training.models import default_relay

    monkeypatch.setattr(defaults, "BUILD_RELAY", True)
    monkeypatch.setattr(default_relay, "RELAY_RECIPE", default_relay.RelayRecipe(**MICRO_RELAY))
    models = defaults.default_models(progress=False)
    assert models.relay_slm.is_file() and models.relay_warmup_slm.is_file() and models.relay_slm != models.relay_warmup_slm
    assert models.relay_command_context == "drop" and models.info["relay_stages"] == ["warm-up", "GRPO"]
    assert models.relay_grpo_curves.is_file()  # reward, accuracy, calls, LLM token ratio, KL per step
    metrics = (models.root / "relay" / "grpo" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and "relay/llm_token_ratio" in json.loads(metrics[0])
    pair_stamp, relay_stamp = models.llm.stat().st_mtime_ns, models.relay_slm.stat().st_mtime_ns
    assert defaults.default_models(progress=False) == models  # reused: same recipe
    assert models.relay_slm.stat().st_mtime_ns == relay_stamp
    # a changed GRPO default rebuilds the relay SLM, and only it
    longer = default_relay.RelayRecipe(**{**MICRO_RELAY, "grpo": {**MICRO_RELAY["grpo"], "steps": 2}})
    monkeypatch.setattr(default_relay, "RELAY_RECIPE", longer)
    rebuilt = defaults.default_models(progress=False)
    assert rebuilt.llm.stat().st_mtime_ns == pair_stamp and rebuilt.slm == models.slm
    assert rebuilt.info["relay_recipe"] != models.info["relay_recipe"]
    assert len((rebuilt.root / "relay" / "grpo" / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_failed_relay_build_is_not_final_for_another_recipe(micro_pair, monkeypatch):
    from relayllm.training.models import default_relay

    monkeypatch.setattr(defaults, "BUILD_RELAY", True)
    broken = {**MICRO_RELAY, "warmup": {**MICRO_RELAY["warmup"], "solved_only": True}}  # micro LLM solves none
    monkeypatch.setattr(default_relay, "RELAY_RECIPE", default_relay.RelayRecipe(**broken))
    models = defaults.default_models(progress=False)
    assert models.relay_slm is None and "no warm-up example" in models.info["relay_error"]
    assert models.slm.is_file()  # the pair stays usable
    assert not defaults._relay_missing_but_buildable(models.root / "manifest.json")  # not retried at every call
    monkeypatch.setattr(default_relay, "RELAY_RECIPE", default_relay.RelayRecipe(**MICRO_RELAY))
    assert defaults._relay_missing_but_buildable(models.root / "manifest.json")  # a new recipe is tried


# ---------------------------------------------------------------------------------------
# The shipped pack (training/models/shipped_pack.py): the real default models, built once and
# committed, so that a fresh clone's demo unpacks them instead of training for ten minutes.


def test_the_shipped_pack_was_built_with_todays_recipes():
    """Fails when a recipe of the default models changes and the pack is not rebuilt with it
    (`python -m relayllm.training.models.shipped_pack build`)."""
    from relayllm.training.models import shipped_pack

    assert shipped_pack.problems() == []


@pytest.fixture
def unpacked(tmp_path, monkeypatch):
    """default_models() on an empty cache, with training made impossible: the pack must serve."""
    monkeypatch.setenv("RELAYLLM_CACHE", str(tmp_path))

    def no_training(*a, **k):
        raise AssertionError("default_models() trained although the shipped pack matches today's recipes")

    for name in ("_build_pair", "_build_relay", "_build_routers"):
        monkeypatch.setattr(defaults, name, no_training)
    return defaults.default_models(progress=False)


def test_an_empty_cache_gets_the_shipped_models_and_they_are_the_real_ones(unpacked):
    from relayllm.edge.models import quiet_llama
    from relayllm.edge.token_router import TokenRouter

    models = unpacked
    for path in (models.llm, models.slm, models.relay_slm, models.relay_warmup_slm, models.r2r_router,
                 models.citer_router, models.relay_grpo_curves):
        assert path is not None and path.is_file(), path
    assert models.relay_command_context == "drop" and models.info["from_pack"]
    assert models.llm_hf is None and models.slm_hf is None  # not packed: only a rebuild reads them
    # the LLM GGUF answers the task as its manifest says (the SLM far less often)
    questions = task.test_split()[:20]
    llm_right = tiny_models.gguf_accuracy(models.llm, questions)
    assert llm_right >= 0.8 and tiny_models.gguf_accuracy(models.slm, questions) < llm_right
    llama = quiet_llama(model_path=str(models.slm), n_ctx=128, embedding=True)
    assert TokenRouter(models.citer_router, 0.5, llama=llama).mode == "citer"
    stamp = models.llm.stat().st_mtime_ns
    assert defaults.default_models(progress=False) == models and models.llm.stat().st_mtime_ns == stamp
    assert not list(models.root.glob(".unpack-*"))  # the scratch folder is gone


def test_models_unpacked_from_an_older_pack_are_built_afresh(unpacked, monkeypatch):
    """A new router recipe over an unpacked cache: no HF checkpoints to train routers on, so
    the whole folder is built again (here the build is stopped as it starts)."""
    from dataclasses import replace

    monkeypatch.setattr(defaults, "ROUTER_RECIPE", replace(defaults.ROUTER_RECIPE, epochs=41))

    class BuildStarted(Exception):
        pass

    def build_pair(*a, **k):
        raise BuildStarted

    monkeypatch.setattr(defaults, "_build_pair", build_pair)
    with pytest.raises(BuildStarted):
        defaults.default_models(progress=False)
    assert not (unpacked.root / "manifest.json").exists()


def test_a_pack_made_from_a_cache_unpacks_to_the_same_files(unpacked, tmp_path, monkeypatch):
    """shipped_pack.pack then unpack_into, here into a scratch folder (not the committed pack)."""
    from relayllm.training.models import shipped_pack

    monkeypatch.setattr(shipped_pack, "SHIPPED", tmp_path / "shipped")
    monkeypatch.setattr(shipped_pack, "ARCHIVE", tmp_path / "shipped" / "default-models.tar.xz")
    monkeypatch.setattr(shipped_pack, "MANIFEST", tmp_path / "shipped" / "default-models.json")
    meta = shipped_pack.pack(unpacked.root)
    assert shipped_pack.problems() == [] and meta["files"]["llm"] == "llm-q8_0.gguf" and meta["build_s"] > 0
    again = shipped_pack.unpack_into(tmp_path / "again")
    for key in shipped_pack.FILE_KEYS:
        assert (tmp_path / "again" / again[key]).read_bytes() == (unpacked.root / again[key]).read_bytes()
    shipped_pack.ARCHIVE.write_bytes(shipped_pack.ARCHIVE.read_bytes()[:-1])  # a cut archive is refused
    assert shipped_pack.problems() == ["default-models.tar.xz is not the archive default-models.json names"]
    with pytest.raises(SystemExit, match="no models in"):
        shipped_pack.pack(tmp_path / "shipped")

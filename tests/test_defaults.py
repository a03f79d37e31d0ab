"""default_models(): built once into the cache (under a lock), then reused at once.

The recipe is shrunk to micro models so the build takes seconds; the real build is the
same code with the real configs (relayllm demo runs it).
"""

from __future__ import annotations

import threading

import pytest

from relayllm.training import defaults, tiny_models

MICRO = tiny_models.TinyConfig(hidden=64, layers=1, heads=2, intermediate=128, steps=20, batch=16)


@pytest.fixture
def micro_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAYLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny_models, "LLM_CONFIG", MICRO)
    monkeypatch.setattr(tiny_models, "SLM_CONFIG", MICRO)
    monkeypatch.setattr(defaults, "_relay_training", lambda: None)  # the pair only
    return tmp_path


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
    assert 0.0 <= first.info["llm"]["test_accuracy"] <= 1.0 and "gguf_test_accuracy" in first.info["slm"]
    stamp = first.llm.stat().st_mtime_ns
    again = defaults.default_models(progress=False)
    assert again == first and again.llm.stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_recipe_hash_follows_the_recipe(micro_recipe, monkeypatch):
    before = defaults.recipe_hash(0)
    assert defaults.recipe_hash(1) != before
    monkeypatch.setattr(tiny_models, "SLM_CONFIG", tiny_models.TinyConfig(steps=1))
    assert defaults.recipe_hash(0) != before

"""Export of a tiny trained model to GGUF with llama.cpp's converter and quantizer, and parity.

One tiny model (one layer, trained for a few seconds) is built once per session.
"""

from __future__ import annotations

import pytest

from relayllm.training.data import task
from relayllm.training.models import export, tiny_models

MICRO = tiny_models.TinyConfig(hidden=64, layers=1, heads=2, intermediate=128, steps=150, batch=32)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_models.load_tokenizer()


@pytest.fixture(scope="session")
def micro(tmp_path_factory, tokenizer):
    """HF checkpoint of a tiny trained model and its f16 / Q8_0 / Q4_K_M GGUFs."""
    root = tmp_path_factory.mktemp("micro")
    tiny_models.train_tiny(root / "hf", MICRO, seed=0, progress=False, tokenizer=tokenizer)
    paths = export.export(root / "hf", root, name="micro", quants=("q8_0", "q4_k_m"))
    return root / "hf", paths


PARITY_TEXTS = [e.text for e in task.test_split()[:12]] + [
    "3456+0789:6+9+0=15;<call>4</call>5+8+1=14;#4245",
    "Hello, world! <call>12</call> and more text</call>",
]


def test_converter_writes_every_type(micro):
    _, paths = micro
    assert set(paths) == {"f16", "q8_0", "q4_k_m"}
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    assert sizes["q8_0"] < sizes["f16"] and sizes["q4_k_m"] <= sizes["q8_0"]


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_export_parity(micro, kind):
    hf_dir, paths = micro
    report = export.parity(paths[kind], hf_dir, PARITY_TEXTS)
    assert report.token_mismatches == 0, report.examples
    assert report.positions > 400
    assert report.greedy_agreement >= 0.99, report.summary()


def test_q4_k_m_runs(micro):
    # narrow tensors fall back to other types inside llama.cpp; the model still loads and agrees mostly
    hf_dir, paths = micro
    report = export.parity(paths["q4_k_m"], hf_dir, PARITY_TEXTS[:4])
    assert report.token_mismatches == 0 and report.greedy_agreement >= 0.9, report.summary()


def test_command_tokens_survive_the_round_trip(micro, tokenizer):
    _, paths = micro
    call_ids = tokenizer.convert_tokens_to_ids(["<call>", "</call>"])
    assert call_ids == [len(tokenizer) - 2, len(tokenizer) - 1]
    for kind in ("f16", "q8_0"):
        got = export.roundtrip_tokens(paths[kind], micro[0], "12;<call>8</call>3+4")
        assert got["hf"] == got["gguf"]
        assert call_ids[0] in got["gguf"] and call_ids[1] in got["gguf"]
        assert got["gguf_text"] == got["hf_text"] == "12;<call>8</call>3+4"


def test_greedy_stays_in_the_task_subset_after_export(micro, tokenizer):
    """Trained on subset logits only, the full-vocabulary GGUF still picks task tokens."""
    from llama_cpp import Llama

    _, paths = micro
    allowed = set(tiny_models.task_token_ids(tokenizer))
    llama = Llama(str(paths["q8_0"]), n_ctx=256, verbose=False, n_threads=2)
    try:
        for ex in task.test_split()[:8]:
            llama.reset()
            out = []
            for tok in llama.generate(llama.tokenize(ex.prompt.encode(), add_bos=False), temp=0.0, top_k=1):
                out.append(tok)
                if tok == llama.token_eos() or len(out) >= 40:
                    break
            assert set(out) <= allowed, [t for t in out if t not in allowed]
    finally:
        llama.close()


def test_quantize_errors_are_clear(micro, tmp_path):
    _, paths = micro
    with pytest.raises(export.ExportError, match="unknown quantization"):
        export.quantize(paths["f16"], tmp_path / "x.gguf", "q3_banana")
    with pytest.raises(export.ExportError, match="not found"):
        export.quantize(tmp_path / "missing.gguf", tmp_path / "x.gguf", "q8_0")
    with pytest.raises(export.ExportError, match="no config.json"):
        export.convert(tmp_path, tmp_path / "x.gguf")


def test_a_qwen2_checkpoint_converts_with_the_converters_own_gguf(tmp_path):
    """The real pair's architecture: the converter's qwen code needs its bundled gguf module,
    which differs from the gguf distribution transformers loads GGUFs with (both are in use
    here: the tokenizer comes from the 0.5B's GGUF through transformers)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from relayllm.protos import registry

    slm = registry.pull(registry.DEFAULT_SLM, progress=False)
    tok = AutoTokenizer.from_pretrained(str(slm.parent), gguf_file=slm.name)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    gguf = export.convert(tmp_path / "hf", tmp_path / "qwen2-f32.gguf", "f32")
    report = export.parity(gguf, tmp_path / "hf", ["Natalia sold clips to 48 of her friends.", "1 + 2 = 3"])
    assert report.token_mismatches == 0, report.summary()
    assert report.greedy_agreement >= 0.9, report.summary()


def test_a_failed_converter_install_leaves_nothing_behind(tmp_path, monkeypatch):
    from relayllm.training.models import converter

    monkeypatch.setenv("RELAYLLM_CONVERTER_DIR", str(tmp_path / "conv"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no index, no links: pip finds nothing to install
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(converter.ConverterError, match="install it by hand"):
        converter.ensure()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(export.ExportError, match="could not install"):
        export.convert(_hf_dir(tmp_path), tmp_path / "x.gguf")


def _hf_dir(root):
    (root / "hf").mkdir()
    (root / "hf" / "config.json").write_text("{}")
    return root / "hf"


def test_the_command_context_recorded_in_the_gguf_is_the_edges_default(micro, tmp_path):
    import shutil

    from relayllm.edge import RelayDecoder
    from relayllm.edge.models import load_slm
    from relayllm.protos.protocol import COMMAND_CONTEXT_KEY

    _, paths = micro
    plain = load_slm(str(paths["q8_0"]), n_ctx=128)
    assert COMMAND_CONTEXT_KEY not in plain.metadata and RelayDecoder(plain).command_context == "keep"
    plain.close()
    marked = shutil.copy(paths["q8_0"], tmp_path / "marked.gguf")
    export.set_metadata(marked, {COMMAND_CONTEXT_KEY: "drop"})
    assert not list(tmp_path.glob("*.partial"))
    llama = load_slm(str(marked), n_ctx=128)
    try:
        assert llama.metadata[COMMAND_CONTEXT_KEY] == "drop"
        assert RelayDecoder(llama).command_context == "drop"  # read from the file
        assert RelayDecoder(llama, command_context="keep").command_context == "keep"  # a choice wins
        # the weights are untouched: the same greedy tokens as the unmarked file
        text = task.test_split()[0].prompt
        ref = load_slm(str(paths["q8_0"]), n_ctx=128)
        assert _greedy(ref, text) == _greedy(llama, text)
        ref.close()
    finally:
        llama.close()


def test_export_records_metadata_through_quantization(micro, tmp_path):
    from relayllm.edge.models import load_slm
    from relayllm.protos.protocol import COMMAND_CONTEXT_KEY

    hf_dir, _ = micro
    paths = export.export(hf_dir, tmp_path, name="m", quants=("q8_0",), metadata={COMMAND_CONTEXT_KEY: "drop"})
    for kind in ("f16", "q8_0"):
        llama = load_slm(str(paths[kind]), n_ctx=64)
        assert llama.metadata.get(COMMAND_CONTEXT_KEY) == "drop", kind
        llama.close()


def _greedy(llama, text, n=12):
    out = []
    for tok in llama.generate(llama.tokenize(text.encode(), add_bos=False), temp=0.0, top_k=1, reset=True):
        out.append(tok)
        if len(out) >= n:
            break
    return out

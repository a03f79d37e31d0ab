"""HF checkpoints for the relay training (warm-up, GRPO), with the command tokens in them.

- The command `<call>N</call>` as two added, non-special tokens around N's digits, so the
  SLM learns it as single tokens and the edge detects it by id (or as text, either way).
- Loading an HF checkpoint folder (model + tokenizer), making sure the command tokens are
  in the tokenizer and the embeddings cover them.
Not here: the helper LLM that writes a call's tokens (training/relay/helper_llm.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from relayllm.protos.grammar import COMMAND_TOKENS
from relayllm.training.errors import TrainingError


def add_command_tokens(tokenizer, model=None) -> tuple[int, int]:
    """Add `<call>`/`</call>` (non-special) when missing, resize the embeddings to cover them.
    Returns their ids."""
    missing = [t for t in COMMAND_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    open_id, close_id = tokenizer.convert_tokens_to_ids(list(COMMAND_TOKENS))
    return open_id, close_id


def command_ids(tokenizer, n: int) -> list[int]:
    """Token ids of `<call>N</call>`: the open token, N's digits, the close token."""
    open_id, close_id = tokenizer.convert_tokens_to_ids(list(COMMAND_TOKENS))
    return [open_id, *tokenizer.encode(str(int(n)), add_special_tokens=False), close_id]


def load_checkpoint(path, *, what: str = "model", dtype=torch.float32, commands: bool = True):
    """(model, tokenizer) from an HF checkpoint folder or a GGUF file (transformers
    dequantizes it into a torch model with its tokenizer), command tokens ensured (unless
    `commands` is False: the model exactly as the edge runs its GGUF, as the routers read
    it), in eval mode, on the GPU when there is one (training then runs there; TRL keeps it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        from transformers import GgufConfig

        # dequantized into plain dense weights: transformers would otherwise keep the GGUF's
        # blocks packed behind kernels whose backward runs torch's single-threaded fallback
        # gemm (a warm-up step of the 0.5B took over 6 minutes instead of about one)
        where, kw = str(path.parent), {"gguf_file": path.name, "quantization_config": GgufConfig(dequantize=True)}
    elif (path / "config.json").is_file():
        where, kw = str(path), {}
    else:
        raise TrainingError(f"{what}: neither an HF checkpoint folder (no config.json) nor a GGUF file: {path}")
    tokenizer = AutoTokenizer.from_pretrained(where, **({"gguf_file": kw["gguf_file"]} if kw else {}))
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw)
    if kw:  # transformers dequantized the GGUF into plain float32 weights: a trainable model,
        # not a quantized one (its quantization marks would make the Trainer refuse it)
        model.is_quantized, model.hf_quantizer = False, None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    rows = model.get_input_embeddings().weight.shape[0]
    if commands:
        add_command_tokens(tokenizer, model)
    if kw or model.get_input_embeddings().weight.shape[0] != rows:
        # the model in memory is no longer the one in `where` (dequantized, or new rows for the
        # command tokens, initialised at random): nothing may load it from there again (TRL
        # builds GRPO's KL reference from `_name_or_path`; grpo.make_trainer then saves this one)
        model.config._name_or_path = ""
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer

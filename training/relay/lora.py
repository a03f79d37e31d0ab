"""LoRA for the warm-up (training/relay/warmup.py): adapters on the attention projections
plus the command tokens' rows, and those rows of an untied output head saved beside the
adapter (training/relay/ship.py ships both)."""

from __future__ import annotations

from pathlib import Path

import torch

from relayllm.training.relay.config import WarmupConfig
from relayllm.training.relay.ship import HEAD_ROWS_FILE  # the output head's command rows (untied heads)

# LoRA goes on the attention projections (Llama / Qwen2 / SmolLM names)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def with_lora(model, c: WarmupConfig, command_token_ids: tuple[int, int]):
    """The model with LoRA adapters (peft) on its attention projections and the command
    tokens' rows trainable, everything else frozen: their input-embedding rows through peft's
    trainable tokens and, when the output head is not tied to the embedding (the Qwen2.5 GGUFs
    load untied: without those rows the SLM could never learn to write `<call>`), their
    output-head rows through a gradient mask (TRL's SFT reads `lm_head.weight` directly, so a
    peft wrapper there would never train; with weight decay 0, Adam leaves a row whose gradient
    is always zero exactly as it was). `command_head_rows` saves them beside the adapter."""
    from peft import LoraConfig, get_peft_model

    rows = list(command_token_ids)
    config = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                        trainable_token_indices={"embed_tokens": rows}, task_type="CAUSAL_LM")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    model = get_peft_model(model, config)
    if not tied:
        weight = model.get_output_embeddings().weight
        mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        mask[rows] = 1
        weight.requires_grad_(True)
        weight.register_hook(lambda grad: grad * mask)
    return model


def save_command_head_rows(model, command_token_ids: tuple[int, int], folder: Path) -> Path | None:
    """The output head's command rows, beside the adapter (None when the head is tied)."""
    from safetensors.torch import save_file

    if getattr(model.config, "tie_word_embeddings", False):
        return None
    ids = list(command_token_ids)
    rows = model.get_output_embeddings().weight.detach()[ids].float().contiguous()
    path = Path(folder) / HEAD_ROWS_FILE
    save_file({"ids": torch.tensor(ids), "rows": rows}, str(path))
    return path

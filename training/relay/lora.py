"""LoRA for the warm-up (training/relay/warmup.py): adapters on the attention projections
plus the command tokens' rows, and those rows of an untied output head saved beside the
adapter (training/relay/ship.py ships both)."""

from __future__ import annotations

from pathlib import Path

import torch

from relayllm.training.relay.ship import HEAD_ROWS_FILE  # the output head's command rows (untied heads)

# LoRA goes on the attention projections (Llama / Qwen2 / SmolLM names)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def with_lora(model, c, command_token_ids: tuple[int, int]):
    """The model with LoRA adapters (peft) on its attention projections and the command
    tokens' rows trainable, everything else frozen: their input-embedding rows through peft's
    trainable tokens and, when the output head is not tied to the embedding (the Qwen2.5 GGUFs
    load untied: without those rows the SLM could never learn to write `<call>`), their
    output-head rows through a gradient mask (TRL's SFT reads `lm_head.weight` directly, so a
    peft wrapper there would never train; with weight decay 0, Adam leaves a row whose gradient
    is always zero exactly as it was). `command_head_rows` saves them beside the adapter.
    `c`: the stage's config (WarmupConfig or GrpoConfig: lora_r, lora_alpha)."""
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


def save_adapter_and_merged(model, command_token_ids: tuple[int, int], out_dir: Path, adapter_dir: str) -> None:
    """A LoRA stage's output: the adapter with the head's command rows in `out_dir/adapter_dir`
    (small: what a release ships), and the merged model in `out_dir`, a plain HF checkpoint
    that the next stage, the export and the parity checks read like any other."""
    if "ref" in getattr(model, "peft_config", {}):  # TRL's frozen copy for GRPO's KL reference: not shipped
        model.delete_adapter("ref")
    model.save_pretrained(str(Path(out_dir) / adapter_dir))
    save_command_head_rows(model, command_token_ids, Path(out_dir) / adapter_dir)
    model.merge_and_unload().save_pretrained(str(out_dir))


def head_rows_checkpoints(model, command_token_ids: tuple[int, int]):
    """A TrainerCallback that saves the head's command rows into every checkpoint: the
    Trainer saves a peft model's adapter only, and a run resumed without them would go on
    with the rows it started from (`restore_command_head_rows` puts them back)."""
    from transformers import TrainerCallback

    class HeadRows(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                save_command_head_rows(model, command_token_ids, folder)

    return HeadRows()


def restore_command_head_rows(model, checkpoint) -> None:
    """Resume: the head's command rows as the checkpoint saved them (nothing when it has none)."""
    from safetensors.torch import load_file

    path = Path(checkpoint) / HEAD_ROWS_FILE if checkpoint else None
    if path is None or not path.is_file():
        return
    head = load_file(str(path))
    with torch.no_grad():
        weight = model.get_output_embeddings().weight
        weight[head["ids"].tolist()] = head["rows"].to(device=weight.device, dtype=weight.dtype)

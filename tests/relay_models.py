"""Crafted tiny model pairs for the relay training tests (real HF Llama models, real tokenizer).

A one-layer Llama whose attention and MLP outputs are zeroed is a pure bigram model: the
next token depends only on the current one, through the embedding and the (untied) output
head. Setting those two matrices writes any transition table we want, so tests know
exactly where an SLM departs from an LLM, and can make an SLM that writes a command with
a chosen probability (two successors with equal logits -> 50/50 when sampling).
"""

from __future__ import annotations

from pathlib import Path

import torch

HIDDEN = 32
SCALE = 3.0  # logit of a listed successor: SCALE * sqrt(HIDDEN) ~ 17, far above the rest (0)


def tokenizer():
    from relayllm.training.models.tiny_models import load_tokenizer  # SmolLM2's, + <call> </call>

    return load_tokenizer()


def _id(tok, piece: str) -> int:
    if piece == "EOS":
        return tok.eos_token_id
    ids = tok.convert_tokens_to_ids([piece])
    if ids[0] is None or ids[0] == tok.unk_token_id:
        ids = tok.encode(piece, add_special_tokens=False)
    assert len(ids) == 1, (piece, ids)
    return ids[0]


def bigram_model(tok, transitions: dict[str, list[str]], seed: int = 0):
    """A Llama over the whole tokenizer that follows `transitions` (token -> successors,
    equal odds among them); any other token is followed by a near-uniform choice."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=32, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    assert len(transitions) <= HIDDEN
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        emb, head = model.get_input_embeddings().weight, model.lm_head.weight
        emb.zero_()
        head.zero_()
        for slot, (src, succs) in enumerate(transitions.items()):
            emb[_id(tok, src), slot] = 1.0
            for dst in succs:
                head[_id(tok, dst), slot] = SCALE
    model.eval()
    return model


# The task: prompt "1+1:", gold path "5;#8" (answer 8).
PROMPT, ANSWER = "1+1:", "8"
LLM_TRANSITIONS = {":": ["5"], "5": [";"], ";": ["#"], "#": ["8"], "8": ["EOS"]}
# Departs after "5" (writes "6"), then rejoins the path: the guided warm-up calls at t=1.
SLM_DIVERGING = {":": ["5"], "5": ["6"], "6": [";"], ";": ["#"], "#": ["8"], "8": ["EOS"]}
# Wrong alone ("5;#9"); half of the time it calls the LLM for 4 tokens first, which writes
# "5;#8", and the SLM ends after "8": correct with a call.
SLM_CALLING = {":": ["5", "<call>"], "<call>": ["4"], "4": ["</call>"], "5": [";"], ";": ["#"], "#": ["9"],
               "9": ["EOS"], "8": ["EOS"]}


# Calls on every prompt that ends in ":" (the built-in task's prompts too): writes "5", then
# `<call>2</call>`; the LLM, shown the prompt and "5", writes ";#"; the SLM ends with "8".
SLM_WRITES_A_COMMAND = {":": ["5"], "5": ["<call>"], "<call>": ["2"], "2": ["</call>"], "#": ["8"], "8": ["EOS"]}


def attentive_pair(tok, slm_transitions: dict, *, seed: int, scale: float):
    """(SLM, LLM) bigram models whose SLM has noisy attention outputs (o_proj ~ N(0, scale)),
    so its log-probs depend on what each position can see (padding, dropped commands)."""
    import torch

    slm = bigram_model(tok, slm_transitions)
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in slm.model.layers:
            layer.self_attn.o_proj.weight.normal_(0, scale)
    return slm, bigram_model(tok, LLM_TRANSITIONS)


def save_pair(root: Path, slm_transitions: dict, llm_transitions: dict = LLM_TRANSITIONS) -> tuple[Path, Path]:
    """Save a crafted SLM and LLM as HF checkpoint folders (model + tokenizer)."""
    tok = tokenizer()
    paths = []
    for name, trans in (("slm", slm_transitions), ("llm", llm_transitions)):
        out = Path(root) / name
        bigram_model(tok, trans).save_pretrained(out)
        tok.save_pretrained(out)
        paths.append(out)
    return paths[0], paths[1]


def calling_pair_gguf(root: Path) -> tuple[Path, Path]:
    """(SLM, LLM) GGUFs (f16, by the project's exporter: llama.cpp's converter) of an SLM that
    really calls, SLM_WRITES_A_COMMAND, and the LLM of LLM_TRANSITIONS; same tokenizer."""
    from relayllm.training.models.export import export

    slm_dir, llm_dir = save_pair(root, SLM_WRITES_A_COMMAND)
    return export(slm_dir, root, name="slm", quants=())["f16"], export(llm_dir, root, name="llm", quants=())["f16"]

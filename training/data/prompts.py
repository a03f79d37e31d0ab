"""How a question is shown to a model, the same way in evaluation and in training.

- The built-in task: its own raw format (training/data/task.py format_prompt), on which the
  tiny models were trained.
- A JSONL benchmark on a model with a chat template (an instruct model): one user turn, the
  question then an instruction (default: the paper's), through the model's own template --
  llama.cpp's from the GGUF metadata on the edge (RelayDecoder chat=True), the tokenizer's
  `apply_chat_template` in training; both render the same Jinja template.
- A JSONL benchmark on a plain-completion model (no template): the raw question.
"""

from __future__ import annotations

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def user_message(question: str, instruction: str | None = DEFAULT_INSTRUCTION) -> str:
    """The user turn: the question, then the instruction on its own line (none when empty)."""
    question = str(question).strip()
    return f"{question}\n{instruction}" if instruction else question


def gguf_has_chat_template(llama) -> bool:
    """Whether a loaded llama.cpp model carries a chat template in its GGUF metadata."""
    return bool((getattr(llama, "metadata", None) or {}).get("tokenizer.chat_template"))


def hf_prompt(tokenizer, question: str, *, instruction: str | None = DEFAULT_INSTRUCTION, chat: bool | None = None) -> str:
    """The prompt text for an HF tokenizer: its chat template around `user_message` when it
    has one (`chat` None: when there is one; False: never), else the raw question. Tokenize
    the result without adding special tokens: the template already holds them as text."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if not use_chat:
        return str(question)
    return tokenizer.apply_chat_template([{"role": "user", "content": user_message(question, instruction)}],
                                         tokenize=False, add_generation_prompt=True)

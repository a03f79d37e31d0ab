"""Teaching an SLM to relay: warm-up (SFT on `<call>N</call>`), GRPO with relay rollouts and
rewards, their configs, and `relayllm train` (warm-up -> GRPO -> GGUF export)."""

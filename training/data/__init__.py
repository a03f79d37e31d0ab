"""Questions and answers: the built-in addition task, JSONL benchmarks (GSM8K, MATH-500),
how a question is shown to a model (prompts), and how an answer is graded.

Shared by evaluation (training/eval) and relay training (training/relay), so both read,
show and grade a question the same way.
"""

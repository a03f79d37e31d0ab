"""The shipped relay SLM: a LoRA adapter committed with its manifest, built into a GGUF on first use.

What relay training on the real pair produces is small: LoRA matrices on the 0.5B's attention
projections plus the two command tokens' embedding rows (training/relay/warmup.py with_lora),
a few MB. It is committed under training/relay/shipped/<name>/ with a manifest that says how it
was made (recipe and its sha256, data subset, seed, commit, steps, validation figures) and the
sha256 of every adapter file. The registry names it (`qwen2.5-coder-0.5b-relay`); the first
`relayllm models pull` of it builds the edge's GGUF: the base GGUF (from the registry) loaded
into torch, the adapter merged, llama.cpp's converter, the manifest's quantization, an atomic
rename into the models cache. That needs the train extra (torch); the edge then runs the file
like any other. When GRPO trained an adapter too (grpo.lora_r > 0), `package` ships it in
`grpo/` beside the warm-up's and the build merges both, in order.

    python -m relayllm.training.relay.ship package runs/relay-pair [--validation runs/probe/relay.json]
    python -m relayllm.training.relay.ship check                      # the manifest still matches
    python -m relayllm.training.relay.ship unpack runs/relay-pair     # the shipped warm-up, for GRPO

`check()` is what the tests run: the recipe changed since the adapter was trained, or an
adapter file is not the one the manifest names, and the shipped artifact is stale.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from relayllm.protos.registry import sha256_file as _sha256

NAME = "qwen2.5-coder-0.5b-relay"
HERE = Path(__file__).parent
SHIPPED = HERE / "shipped" / NAME
RECIPE = HERE / "recipes" / "qwen2.5-coder-pair.toml"
MANIFEST = "manifest.json"
# peft's adapter (LoRA + the command rows of the input embedding) and the command rows of the
# output head (training/relay/warmup.py with_lora: the Qwen2.5 GGUFs load with an untied head)
HEAD_ROWS_FILE = "command_head_rows.safetensors"  # lora.save_command_head_rows writes it
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", HEAD_ROWS_FILE)
GRPO_DIR = "grpo"  # GRPO's adapter, when it ships: on top of the merged warm-up


def recipe_digest(recipe: Path, stages=("warmup",)) -> str:
    """sha256 of what the recipe says about the stages an artifact was trained by: its
    top-level keys and those stages' sections, with [export] (canonical JSON). A change to
    another stage's section (GRPO's, when only the warm-up ships) leaves the artifact current."""
    import hashlib

    from relayllm.training.relay.config import read_config_file  # tomllib, or tomli on Python 3.10

    raw = read_config_file(recipe)
    part = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    part.update({s: raw.get(s, {}) for s in (*stages, "export")})
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()


def manifest(folder: Path = SHIPPED) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def inputs_digest(folder: Path = SHIPPED) -> str:
    """What a built GGUF is built from (the manifest names every input by its digest)."""
    return _sha256(folder / MANIFEST)


def check(folder: Path = SHIPPED, recipe: Path = RECIPE) -> list[str]:
    """Problems with the shipped artifact (empty: it matches its manifest and the recipe)."""
    if not (folder / MANIFEST).is_file():
        return [f"no {MANIFEST} in {folder}"]
    m = manifest(folder)
    problems = []
    if recipe_digest(recipe, m.get("recipe_stages", ["warmup"])) != m.get("recipe_sha256"):
        problems.append(f"the recipe {recipe.name} changed since the adapter was trained: retrain it "
                        f"({m.get('rebuild', 'see the manifest')})")
    for name in m.get("files") or ADAPTER_FILES:
        path = folder / name
        if not path.is_file():
            problems.append(f"missing {name}")
        elif _sha256(path) != m.get("files", {}).get(name):
            problems.append(f"{name} is not the file the manifest names")
    return problems


def package(run_dir: str | Path, folder: Path = SHIPPED, recipe: Path = RECIPE, validation: dict | None = None) -> Path:
    """Copy a finished warm-up's adapter into `folder` and write its manifest; when the run
    also holds a finished GRPO stage with an adapter (grpo.lora_r > 0), that adapter too, in
    `folder/grpo/` (it applies on top of the merged warm-up)."""
    from relayllm.protos import registry
    from relayllm.training.relay.grpo import DONE_MARK as GRPO_DONE
    from relayllm.training.relay.warmup import ADAPTER_DIR, DONE_MARK

    run_dir = Path(run_dir)
    done = json.loads((run_dir / "warmup" / DONE_MARK).read_text())
    grpo_done = run_dir / "grpo" / GRPO_DONE
    stages = ["warmup", "grpo"] if grpo_done.is_file() and (run_dir / "grpo" / ADAPTER_DIR).is_dir() else ["warmup"]
    names = [*ADAPTER_FILES, *(f"{GRPO_DIR}/{n}" for n in ADAPTER_FILES if "grpo" in stages)]
    (folder / GRPO_DIR if "grpo" in stages else folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        stage, _, file = name.rpartition("/")
        shutil.copyfile(run_dir / (stage or "warmup") / ADAPTER_DIR / file, folder / name)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    except OSError:
        commit = ""
    base = registry.entry(registry.DEFAULT_SLM)
    m = {
        "name": NAME, "base": base.name, "base_sha256": base.sha256,
        "recipe": f"training/relay/recipes/{recipe.name}", "recipe_stages": stages,
        "recipe_sha256": recipe_digest(recipe, stages),
        "data": "gsm8k:pool (training/data/gsm8k/pool.jsonl)", "seed": done.get("seed"),
        "commit": done.get("commit") or commit,  # an unpacked warm-up keeps the commit it was trained at
        "stage": stages[-1], "steps": done.get("steps"), "examples": done.get("examples"), "calls": done.get("calls"),
        "loss_first": done.get("loss_first"), "loss_last": done.get("loss_last"),
        "command_context": "drop" if done.get("config", {}).get("clean_context") else "keep",
        "quant": "q8_0", "validation": validation,
        "files": {name: _sha256(folder / name) for name in names},
        "rebuild": f"relayllm train warmup --config training/relay/recipes/{recipe.name} --out runs/relay-pair && "
                   "python -m relayllm.training.relay.ship package runs/relay-pair",
    }
    if "grpo" in stages:
        g = json.loads(grpo_done.read_text())
        m["grpo"] = {**{k: g.get(k) for k in ("steps", "reward", "lr", "kl", "group_size", "helper_calls", "seed")},
                     "command_context": g.get("config", {}).get("command_context"), "commit": commit}
        m["command_context"] = m["grpo"]["command_context"] or m["command_context"]
        m["rebuild"] = (f"python -m relayllm.training.relay.ship unpack runs/relay-pair && relayllm train grpo "
                        f"--config training/relay/recipes/{recipe.name} --out runs/relay-pair --llm grpc://HOST:PORT "
                        "&& python -m relayllm.training.relay.ship package runs/relay-pair")
    (folder / MANIFEST).write_text(json.dumps(m, indent=1) + "\n")
    return folder


def _merged(folder: Path, base, stages=("warmup",)):
    """(model, tokenizer): the base model (float32) with the adapter in `folder` merged and
    the output head's command rows set, then GRPO's adapter (folder/grpo) the same way when
    `stages` name it."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from relayllm.training.relay.checkpoints import load_checkpoint

    # float32, as the warm-up trained: a bfloat16 merge rounds away LoRA deltas smaller
    # than the weight's last bit (8 bits of mantissa), which is most of them
    model, tokenizer = load_checkpoint(base, what="base SLM", dtype=torch.float32)
    for stage in (folder, *([folder / GRPO_DIR] if "grpo" in stages else [])):
        model = PeftModel.from_pretrained(model, str(stage)).merge_and_unload()
        head = load_file(str(stage / HEAD_ROWS_FILE))
        with torch.no_grad():
            weight = model.get_output_embeddings().weight
            weight[head["ids"].tolist()] = head["rows"].to(weight.dtype)
    return model, tokenizer


def unpack(run_dir: str | Path, *, folder: Path = SHIPPED, base: str | Path | None = None,
           recipe: Path = RECIPE) -> Path:
    """The shipped warm-up as a finished warm-up stage in `run_dir/warmup` (merged checkpoint,
    adapter, done mark), so that `relayllm train grpo --out run_dir` starts from it without
    rerunning the warm-up (its LLM paths are an hour of the 1.5B on 2 cores)."""
    from relayllm.protos.registry import RegistryError, pull
    from relayllm.training.relay.warmup import ADAPTER_DIR, DONE_MARK

    problems = check(folder, recipe)
    if problems:
        raise RegistryError(f"{NAME}: the shipped adapter does not match its manifest: {'; '.join(problems)}")
    m = manifest(folder)
    out = Path(run_dir) / "warmup"
    model, tokenizer = _merged(folder, base or pull(m["base"]))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / ADAPTER_DIR).mkdir(exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copyfile(folder / name, out / ADAPTER_DIR / name)
    keep = ("steps", "examples", "calls", "loss_first", "loss_last", "seed")
    done = {**{k: m.get(k) for k in keep}, "unpacked_from": str(folder), "commit": m.get("commit"),
            "config": {"clean_context": m.get("command_context") == "drop"}}
    (out / DONE_MARK).write_text(json.dumps(done, indent=1))
    return out


def build(dest: str | Path, *, progress: bool = True, folder: Path = SHIPPED, base: str | Path | None = None,
          recipe: Path = RECIPE) -> Path:
    """The relay SLM's GGUF at `dest`, built from the base model (the manifest's, from the
    registry; `base`: a GGUF or HF folder instead) and the shipped adapter."""
    from relayllm.protos.registry import RegistryError, pull

    problems = check(folder, recipe)
    if problems:
        raise RegistryError(f"{NAME}: the shipped adapter does not match its manifest: {'; '.join(problems)}")
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise RegistryError(f"{NAME} is built from its adapter on first use, which needs torch and peft: "
                            "pip install 'relayllm[train]'") from None
    from relayllm.protos.protocol import COMMAND_CONTEXT_KEY
    from relayllm.training.models import export

    m = manifest(folder)
    dest = Path(dest)
    base = base or pull(m["base"], progress=progress)
    with tempfile.TemporaryDirectory(prefix=f".build-{NAME}-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        model, tokenizer = _merged(folder, base, m.get("recipe_stages", ["warmup"]))
        model.save_pretrained(str(tmp / "hf"))
        tokenizer.save_pretrained(str(tmp / "hf"))
        del model
        f16 = export.convert(tmp / "hf", tmp / "model-f16.gguf", "f16")
        # the command context it was trained for: the edge, `generate` and `local` default to it
        export.set_metadata(f16, {COMMAND_CONTEXT_KEY: m["command_context"]})
        out = export.quantize(f16, tmp / "model.gguf", m["quant"])
        os.replace(out, dest)  # whole or not at all: the models cache never holds half a file
    return dest


def validation_figures(result_json: str | Path) -> dict:
    """The manifest's validation figures from a `relayllm eval --mode relay` result (relay.json):
    every run's setting, n, accuracy, LLM token ratio, calls per answer and cut answers."""
    result = json.loads(Path(result_json).read_text())
    keep = ("setting_name", "setting", "n", "correct", "accuracy", "llm_token_ratio", "calls_per_question", "cut")
    return {"data": result["meta"]["data"], "llm": Path(result["meta"]["llm"]).name,
            "max_tokens": result["meta"]["max_tokens"], "runs": [{k: r[k] for k in keep} for r in result["runs"]]}


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m relayllm.training.relay.ship")
    sub = parser.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("package", help="copy a finished warm-up's adapter here and write its manifest")
    pack.add_argument("run_dir", help="the `relayllm train --out` folder (its warmup/ is packaged)")
    pack.add_argument("--validation", metavar="RELAY.json", help="a `relayllm eval --mode relay` result for the manifest")
    sub.add_parser("check", help="the shipped adapter still matches its manifest and the recipe")
    unp = sub.add_parser("unpack", help="the shipped warm-up as RUN_DIR/warmup, for `relayllm train grpo --out RUN_DIR`")
    unp.add_argument("run_dir")
    args = parser.parse_args(argv)
    if args.command == "unpack":
        print(unpack(args.run_dir))
        return 0
    if args.command == "package":
        print(package(args.run_dir, validation=validation_figures(args.validation) if args.validation else None))
        return 0
    problems = check()
    print("\n".join(problems) or f"{NAME}: the shipped adapter matches its manifest and the recipe")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""HF checkpoint -> GGUF with llama.cpp's own tools, and a parity check of the result.

- Conversion: llama.cpp's converter (`convert_hf_to_gguf`, from the `convert-hf-to-gguf`
  package, in a folder of its own: training/models/converter.py says why), run as its own
  command line in a subprocess, writes f16 (or q8_0) GGUF. The
  tokenizer goes with it, added tokens included, so `<call>`/`</call>` stay single tokens.
- Quantization: llama.cpp's quantizer through llama-cpp-python (`llama_model_quantize`),
  to Q8_0 or Q4_K_M. Q4_K needs rows that are a multiple of 256 wide; llama.cpp quantizes
  narrower tensors with a fallback type and says so in its log.
- Parity: the GGUF (llama.cpp) and the HF model must tokenize a set of texts to the same
  ids and choose the same greedy next token at (nearly) every position.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from relayllm.training.models import converter

CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # written directly by the converter
QUANT_TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
               "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
               "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


class ExportError(RuntimeError):
    """Conversion or quantization failed; the message says which step and why."""


def convert(hf_dir: str | Path, out_file: str | Path, outtype: str = "f16") -> Path:
    """Convert an HF checkpoint folder (model + tokenizer) to GGUF with llama.cpp's converter."""
    hf_dir, out_file = Path(hf_dir), Path(out_file)
    if not (hf_dir / "config.json").is_file():
        raise ExportError(f"not an HF checkpoint folder (no config.json): {hf_dir}")
    if outtype not in CONVERTER_TYPES:
        raise ExportError(f"converter output type must be one of {CONVERTER_TYPES}, got {outtype!r}")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        cmd, env = converter.command(str(hf_dir), "--outfile", str(out_file), "--outtype", outtype)
    except converter.ConverterError as err:
        raise ExportError(str(err)) from None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not out_file.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ExportError(f"llama.cpp converter failed on {hf_dir} (exit {proc.returncode}):\n{tail}")
    return out_file


def quantize(src: str | Path, dst: str | Path, qtype: str = "q8_0", *, threads: int = 0, verbose: bool = False) -> Path:
    """Quantize a GGUF with llama.cpp's quantizer (llama-cpp-python's llama_model_quantize).
    llama.cpp logs every tensor to stderr; that log is shown only with `verbose`."""
    import llama_cpp

    from relayllm.edge.models import llama_cpp_quietly

    key = qtype.lower()
    if key not in QUANT_TYPES:
        raise ExportError(f"unknown quantization {qtype!r}: choose one of {sorted(QUANT_TYPES)}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ExportError(f"GGUF to quantize not found: {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[key])
    params.nthread = threads
    with llama_cpp_quietly(verbose):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise ExportError(f"llama.cpp could not quantize {src.name} to {qtype} (return code {rc}); "
                          "K-quants need tensor rows that are a multiple of 256 wide")
    return dst


def set_metadata(gguf_path: str | Path, values: dict[str, str]) -> Path:
    """Add (or replace) string keys in a GGUF's metadata, in place: the file is rewritten
    beside itself with the gguf package's own copier and renamed over it when complete."""
    import os

    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    path = Path(gguf_path)
    partial = path.with_name(path.name + ".partial")
    reader = gguf.GGUFReader(str(path), "r")
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(str(partial), arch=arch, endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment.contents()
    try:
        copy_with_new_metadata(reader, writer, {k: MetadataDetails(gguf.GGUFValueType.STRING, str(v))
                                                for k, v in values.items()}, [])
        del reader  # its memory map, before the file is replaced
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def export(hf_dir: str | Path, out_dir: str | Path, *, name: str = "model", quants=("q8_0",),
           metadata: dict[str, str] | None = None) -> dict[str, Path]:
    """f16 GGUF plus the asked quantizations: {"f16": path, "q8_0": path, ...}. `metadata`:
    string keys added to the f16 file before quantizing (llama.cpp's quantizer copies them):
    a relay SLM records its command context (protos/protocol.py COMMAND_CONTEXT_KEY)."""
    out_dir = Path(out_dir)
    paths = {"f16": convert(hf_dir, out_dir / f"{name}-f16.gguf", "f16")}
    if metadata:
        set_metadata(paths["f16"], metadata)
    for q in quants:
        paths[q.lower()] = quantize(paths["f16"], out_dir / f"{name}-{q.lower()}.gguf", q)
    return paths


# ---------------------------------------------------------------------------------------
# Parity


@dataclass
class Parity:
    """How closely a GGUF follows its HF checkpoint on a set of texts."""

    texts: int = 0
    token_mismatches: int = 0  # texts whose token ids differ
    positions: int = 0
    greedy_agree: int = 0
    max_logit_diff: float = 0.0  # over the positions, on the HF top token
    examples: list = field(default_factory=list)  # first few disagreements, for the report

    @property
    def greedy_agreement(self) -> float:
        return self.greedy_agree / self.positions if self.positions else 0.0

    def summary(self) -> str:
        return (f"{self.texts} texts, token ids identical on {self.texts - self.token_mismatches}; "
                f"greedy next token agrees at {self.greedy_agree}/{self.positions} positions "
                f"({self.greedy_agreement:.2%}), max logit diff {self.max_logit_diff:.3f}")


def parity(gguf_path: str | Path, hf_dir: str | Path, texts: list[str], *, n_ctx: int = 512) -> Parity:
    """Compare tokenization and per-position greedy choices of a GGUF and its HF checkpoint."""
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    llama = Llama(str(gguf_path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2)
    report = Parity()
    try:
        for text in texts:
            report.texts += 1
            hf_ids = tok.encode(text, add_special_tokens=False)
            gg_ids = llama.tokenize(text.encode(), add_bos=False, special=False)
            if list(hf_ids) != list(gg_ids):
                report.token_mismatches += 1
                if len(report.examples) < 5:
                    report.examples.append({"text": text, "hf": hf_ids, "gguf": gg_ids})
            with torch.no_grad():
                hf_logits = model(torch.tensor([hf_ids])).logits[0].numpy()
            llama.reset()
            llama.eval(hf_ids)
            gg_logits = np.asarray(llama.scores[: len(hf_ids)])
            hf_top, gg_top = hf_logits.argmax(-1), gg_logits.argmax(-1)
            report.positions += len(hf_ids)
            report.greedy_agree += int((hf_top == gg_top).sum())
            rows = np.arange(len(hf_ids))
            diff = np.abs(hf_logits[rows, hf_top] - gg_logits[rows, hf_top]).max()
            report.max_logit_diff = max(report.max_logit_diff, float(diff))
    finally:
        llama.close()
    return report


def roundtrip_tokens(gguf_path: str | Path, hf_dir: str | Path, text: str) -> dict:
    """How the GGUF and the HF tokenizer tokenize and detokenize `text` (for command tokens)."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    llama = Llama(str(gguf_path), n_ctx=64, vocab_only=True, verbose=False)
    try:
        gg_ids = llama.tokenize(text.encode(), add_bos=False, special=False)
        return {"hf": tok.encode(text, add_special_tokens=False), "gguf": gg_ids,
                "gguf_text": llama.detokenize(gg_ids).decode("utf-8", errors="replace"),
                "hf_text": tok.decode(tok.encode(text, add_special_tokens=False))}
    finally:
        llama.close()

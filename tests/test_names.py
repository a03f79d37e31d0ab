"""Names say what things are: on the device the model is the SLM, never "llm".

The edge once kept its SLM (a llama_cpp.Llama) in a field named `llm` (decoder.llm,
request.llm, link.llm, vocab.llm), which reads as the cloud's model. This scans edge/ and the
edge benchmarks with `ast`: no attribute, parameter or variable there is named `llm` (the
cloud's model is reached through `cloud`, a CloudClient).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGE_SIDE = sorted((ROOT / "edge").glob("*.py")) + [ROOT / "training/bench/edge.py",
                                                     ROOT / "training/bench/edge_local.py"]


def named_llm(tree) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "llm":
            lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id == "llm":
            lines.append(node.lineno)
        elif isinstance(node, ast.arg) and node.arg == "llm":
            lines.append(node.lineno)
    return lines


def test_the_edge_calls_its_model_the_slm():
    found = {str(p.relative_to(ROOT)): named_llm(ast.parse(p.read_text())) for p in EDGE_SIDE}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_scan_sees_the_old_name():
    assert named_llm(ast.parse("class D:\n    def __init__(self, llm):\n        self.llm = llm\n")) == [2, 3, 3]
    assert named_llm(ast.parse("def f(decoder):\n    return decoder.slm.n_tokens\n")) == []

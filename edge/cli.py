"""`relayllm generate`: answer a prompt with the on-device SLM, asking the cloud when it calls.

Prints the answer as it is written, with the cloud-written spans marked (colour on a
terminal, ⟦…⟧ brackets otherwise), then the counters. `--json` prints the Result as JSON.
Imports nothing heavy at import time; never imports torch.
"""

from __future__ import annotations

HELP = "answer a prompt with the on-device SLM, asking the cloud when it calls"

import argparse
import json
import re
import sys

from relayllm.edge.terminal import print_stream
from relayllm.protos.protocol import COMMAND_CONTEXTS

_ADDRESS = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="what to answer")
    parser.add_argument("--model", metavar="GGUF|NAME", default=None,
                        help="the SLM: a GGUF path or a registry name (`relayllm models list`; default: "
                             "qwen2.5-coder-0.5b-instruct, pulled on first use)")
    parser.add_argument("--cloud", metavar="HOST:PORT", default=None,
                        help="the relay cloud service (default: none, the SLM answers alone)")
    parser.add_argument("--token", default=None, help="bearer token for the cloud service")
    parser.add_argument("--max-tokens", type=int, default=256, help="response tokens, SLM + LLM (default 256)")
    parser.add_argument("--max-calls", type=int, default=8, help="calls to the cloud (default 8)")
    parser.add_argument("--max-llm-tokens", type=int, default=256, help="tokens the cloud may write (default 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--call-threshold", type=float, default=None, metavar="P",
                        help="calibration: a relay SLM writes <call> (then N and </call> itself) wherever its "
                             "probability of <call> reaches P (default: only when sampling picks it)")
    parser.add_argument("--command-context", choices=COMMAND_CONTEXTS, default=None,
                        help="after a call, the command stays in the SLM's context (keep, the paper's) or leaves "
                             "it (drop: for an SLM trained that way); default: what the SLM's GGUF records "
                             "(a relay SLM's export writes it), else keep")
    parser.add_argument("--confidence-threshold", type=float, default=None, metavar="P",
                        help="a confidence router: the LLM writes each token where the SLM's top probability is "
                             "below P (for an SLM never taught <call>, like the default 0.5B; default: none)")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds per cloud call (default 10)")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                        help="wrap the prompt in the model's chat template (default: on)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def check_address(address: str) -> str:
    from relayllm.edge.errors import EdgeError

    match = _ADDRESS.match(address)
    if not match or not 0 < int(match.group(1)) < 65536:
        raise EdgeError(f"bad cloud address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    return address


def _model_path(arg: str | None):
    """The SLM's file: a GGUF path or a registry name (default: the device SLM of the registry,
    qwen2.5-coder-0.5b-instruct, pulled on first use)."""
    from relayllm.protos import registry

    return registry.resolve_model(arg or registry.DEFAULT_SLM)


def counters_table(result) -> str:
    rows = [
        ("SLM tokens", str(result.slm_tokens)),
        ("LLM tokens", str(result.llm_tokens)),
        ("calls", str(result.calls)),
        ("LLM token ratio", f"{result.llm_token_ratio:.1%}"),
        ("wall time", f"{result.wall_s:.2f} s"),
        ("finish", result.finish_reason),
        ("cloud prefilled / reused", f"{result.prefilled_tokens} / {result.reused_tokens}"),
        ("degraded", "yes: " + "; ".join(result.degraded_reasons) if result.degraded else "no"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)


def result_json(result) -> str:
    fields = ("text", "slm_tokens", "llm_tokens", "calls", "llm_token_ratio", "wall_s", "degraded",
              "degraded_reasons", "finish_reason", "prefilled_tokens", "reused_tokens")
    out = {name: getattr(result, name) for name in fields}
    out["spans"] = [{"author": a, "text": t} for a, t in result.spans]
    return json.dumps(out, ensure_ascii=False, indent=2)


def run(args) -> int:
    from relayllm.edge.errors import EdgeError

    if args.max_tokens < 1 or args.max_calls < 0 or args.max_llm_tokens < 0:
        raise EdgeError("--max-tokens must be >= 1, --max-calls and --max-llm-tokens >= 0")
    if args.deadline <= 0:
        raise EdgeError("--deadline must be > 0")
    target = check_address(args.cloud) if args.cloud else None
    path = _model_path(args.model)

    from relayllm.edge import Limits, RelayDecoder, Sampling, load_slm

    try:
        limits = Limits(max_calls=args.max_calls, max_llm_tokens=args.max_llm_tokens, max_total_tokens=args.max_tokens)
        sampling = Sampling(temperature=args.temperature)
    except ValueError as exc:
        raise EdgeError(str(exc)) from None
    try:
        slm = load_slm(path, n_ctx=max(2048, args.max_tokens + 512))
    except (ValueError, OSError) as exc:  # llama.cpp could not load the file
        raise EdgeError(f"cannot load {path} as a GGUF model: {exc}") from None
    client = None
    if target is not None:
        from relayllm.edge.client import CloudClient

        client = CloudClient(target, token=args.token, deadline_s=args.deadline)
    try:
        try:
            router = None
            if args.confidence_threshold is not None:
                from relayllm.edge.routers import ConfidenceRouter

                router = ConfidenceRouter(args.confidence_threshold)
            decoder = RelayDecoder(slm, cloud=client, limits=limits, sampling=sampling, chat=args.chat,
                                   deadline_s=args.deadline, call_threshold=args.call_threshold,
                                   command_context=args.command_context, router=router)
        except ValueError as exc:  # a threshold out of range, or an SLM without <call>
            raise EdgeError(str(exc)) from None
        try:
            if args.json:
                result = decoder.generate(args.prompt)
                print(result_json(result))
            else:
                result = print_stream(decoder.stream(args.prompt), sys.stdout)
                print()
                print(counters_table(result))
        except ValueError as exc:  # the prompt does not fit, no chat template...
            raise EdgeError(str(exc)) from None
    finally:
        if client is not None:
            client.close()
    return 0

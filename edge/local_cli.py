"""`relayllm local`: an OpenAI-compatible endpoint on 127.0.0.1 for desktop apps (edge/server.py).

    relayllm local --port 8080 --cloud cloud.example:50051 --api-key secret
    # then any OpenAI client: base_url="http://127.0.0.1:8080/v1"

Privacy switches: --local-only (nothing leaves the device), --daily-llm-tokens N (the
cloud budget per day), --redact (mask e-mails, phone numbers, long digit runs before
anything is sent), --audit-log FILE (JSONL of what left the device; --audit-text keeps the
exact text). Imports nothing heavy at import time.

What it sets for itself, and says on its first line: OMP_WAIT_POLICY=passive unless the
environment sets it (OPENMP_ENV), and the default routing mode for the SLM it was given
(choose_mode: an SLM that cannot write `<call>` gets the confidence router).
"""

from __future__ import annotations

HELP = "serve an OpenAI-compatible endpoint on 127.0.0.1 (the SLM on this device, the cloud when it calls)"

import argparse
import os

from relayllm.protos.protocol import COMMAND_CONTEXTS

# llama.cpp's OpenMP threads spin while they wait (libgomp's default, "active"): on a busy
# machine a thread that decodes request after request ran 5-60x slower than a fresh one
# (training/bench/edge_local.py). The endpoint asks for passive waiting before llama_cpp
# loads (libgomp reads the variable once, at load), unless the environment already says.
OPENMP_ENV = {"OMP_WAIT_POLICY": "passive"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this device only)")
    parser.add_argument("--model", metavar="GGUF|NAME", default=None,
                        help="the SLM: a GGUF path or a registry name (`relayllm models list`; default: "
                             "qwen2.5-coder-0.5b-instruct, pulled on first use; qwen2.5-coder-0.5b-relay: "
                             "the shipped relay SLM, built on first use)")
    parser.add_argument("--cloud", metavar="HOST:PORT", default=None, help="the relay cloud (default: none)")
    parser.add_argument("--token", default=None, help="bearer token for the cloud service")
    parser.add_argument("--api-key", default=os.environ.get("RELAYLLM_API_KEY"),
                        help="require this key from clients (default: $RELAYLLM_API_KEY, else none)")
    parser.add_argument("--mode", default=None, choices=["relay", "confidence", "r2r", "citer", "local-only"],
                        help="routing when a request does not choose (relay_mode); default: relay for an SLM "
                             "that writes <call> (relay-trained), else confidence when --cloud is given")
    parser.add_argument("--confidence-threshold", type=float, default=0.4,
                        help="confidence mode: the LLM writes when the SLM's top probability is below this")
    parser.add_argument("--r2r-router", metavar="ONNX", default=None, help="router file for the r2r mode")
    parser.add_argument("--citer-router", metavar="ONNX", default=None, help="router file for the citer mode")
    parser.add_argument("--router-threshold", type=float, default=0.5, help="threshold of the r2r/citer routers")
    parser.add_argument("--call-threshold", type=float, default=None, help="relay mode: see `relayllm generate`")
    parser.add_argument("--command-context", choices=COMMAND_CONTEXTS, default=None,
                        help="relay mode: see `relayllm generate` (default: what the GGUF records, else keep)")
    parser.add_argument("--max-tokens", type=int, default=256, help="default response tokens per request")
    parser.add_argument("--n-ctx", type=int, default=4096, help="the SLM's context (default 4096)")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds per cloud call (default 10)")
    parser.add_argument("--local-only", action="store_true", help="nothing leaves the device, whatever requests ask")
    parser.add_argument("--daily-llm-tokens", type=int, default=None, help="cloud budget per day, in LLM tokens")
    parser.add_argument("--budget-file", default=None, help="keep the day's count here (survives restarts)")
    parser.add_argument("--redact", action="store_true", help="mask e-mails, phone numbers, long digit runs")
    parser.add_argument("--audit-log", metavar="JSONL", default=None, help="record what left the device")
    parser.add_argument("--audit-text", action="store_true", help="the audit log keeps the exact text sent")


def choose_mode(asked: str | None, *, writes_commands: bool, has_cloud: bool) -> tuple[str, str | None]:
    """The endpoint's default routing mode for this SLM, and what the log should say about it.

    An SLM without `<call>` as one token (not relay-trained: SmolLM2, Qwen...) never writes a
    command, so in relay mode it would never call the cloud, silently. Without --mode such an
    SLM gets the confidence router (the LLM writes where the SLM is unsure); asked for relay
    explicitly, it keeps relay with a warning. Without a cloud nothing calls anyway: relay.
    """
    if asked is not None:
        if asked == "relay" and has_cloud and not writes_commands:
            return asked, ("warning: this SLM has no `<call>` token (not relay-trained), so relay mode never "
                           "calls the cloud; --mode confidence hands the LLM the tokens the SLM is unsure of")
        return asked, None
    if writes_commands or not has_cloud:
        return "relay", None
    return "confidence", ("this SLM has no `<call>` token (not relay-trained): relay mode would never call the "
                          "cloud, so the default mode is confidence (--mode relay to override)")


def build_service(args):
    """The LocalService for these arguments (also used by tests and benchmarks)."""
    from relayllm.edge.cli import _model_path, check_address
    from relayllm.edge.decoder import RelayDecoder
    from relayllm.edge.errors import EdgeError
    from relayllm.edge.models import load_slm
    from relayllm.edge.privacy import AuditLog, DailyBudget, Privacy, redact_personal
    from relayllm.edge.server import LocalService

    # 1) Check the flags before loading anything.
    if args.max_tokens < 1 or args.n_ctx < 64 or args.deadline <= 0:
        raise EdgeError("--max-tokens must be >= 1, --n-ctx >= 64, --deadline > 0")
    if not 0 < args.port < 65536:
        raise EdgeError(f"--port must be in 1..65535, got {args.port}")
    target = check_address(args.cloud) if args.cloud else None
    learned = {m: f for m, f in (("r2r", args.r2r_router), ("citer", args.citer_router)) if f}
    if args.mode in ("r2r", "citer") and args.mode not in learned:
        raise EdgeError(f"--mode {args.mode} needs --{args.mode}-router ONNX")
    # 2) The SLM (with hidden states when a learned router reads them), the cloud, privacy.
    path = _model_path(args.model)
    try:
        slm = load_slm(path, n_ctx=args.n_ctx, embedding=bool(learned))
    except (ValueError, OSError) as exc:
        raise EdgeError(f"cannot load {path} as a GGUF model: {exc}") from None
    client = None
    if target is not None:
        from relayllm.edge.client import CloudClient

        client = CloudClient(target, token=args.token, deadline_s=args.deadline)
    try:
        privacy = Privacy(local_only=args.local_only,
                          budget=DailyBudget(args.daily_llm_tokens, path=args.budget_file),
                          redact=redact_personal if args.redact else None,
                          audit=AuditLog(args.audit_log, with_text=args.audit_text) if args.audit_log else None)
        decoder = RelayDecoder(slm, cloud=client, deadline_s=args.deadline, call_threshold=args.call_threshold,
                               command_context=args.command_context, privacy=privacy)
    except ValueError as exc:
        raise EdgeError(str(exc)) from None
    # 3) A router per mode that needs one.
    from relayllm.edge.routers import ConfidenceRouter

    routers = {"confidence": ConfidenceRouter(args.confidence_threshold)}
    for mode, file in learned.items():
        from relayllm.edge.token_router import RouterError, TokenRouter

        try:
            routers[mode] = TokenRouter(file, args.router_threshold, llama=slm)
        except RouterError as exc:
            raise EdgeError(str(exc)) from None
    # 4) The default mode: one that calls the cloud with this SLM (choose_mode).
    mode, note = choose_mode(args.mode, writes_commands=decoder.writes_commands, has_cloud=client is not None)
    return LocalService(decoder, model=path.stem, mode=mode, routers=routers, api_key=args.api_key,
                        max_tokens=args.max_tokens, mode_note=note)


def openmp_env(environ=None) -> dict:
    """Set OPENMP_ENV where `environ` (default os.environ) does not set it; what is in effect."""
    environ = os.environ if environ is None else environ
    for key, value in OPENMP_ENV.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in OPENMP_ENV}


def run(args) -> int:
    import sys

    # 1) OpenMP's settings first: nothing has loaded llama.cpp yet (this module imports nothing heavy).
    omp = " ".join(f"{k}={v}" for k, v in openmp_env().items())
    if "llama_cpp" in sys.modules:
        omp += " (llama.cpp was loaded before: set it in the environment)"
    import uvicorn

    from relayllm.edge.server import create_app

    service = build_service(args)
    print(f"relayllm local: http://{args.host}:{args.port}/v1 (model {service.model}, mode {service.mode}, {omp})",
          flush=True)
    if service.mode_note:
        print(f"relayllm local: {service.mode_note}", file=sys.stderr, flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning")
    return 0

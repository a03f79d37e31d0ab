"""`relayllm local`: an OpenAI-compatible endpoint on 127.0.0.1 for desktop apps (edge/server.py).

    relayllm local --port 8080 --cloud cloud.example:50051 --api-key secret
    # then any OpenAI client: base_url="http://127.0.0.1:8080/v1"

Privacy switches: --local-only (nothing leaves the device), --daily-llm-tokens N (the
cloud budget per day), --redact (mask e-mails, phone numbers, long digit runs before
anything is sent), --audit-log FILE (JSONL of what left the device; --audit-text keeps the
exact text). Imports nothing heavy at import time.
"""

from __future__ import annotations

HELP = "serve an OpenAI-compatible endpoint on 127.0.0.1 (the SLM on this device, the cloud when it calls)"

import argparse
import os

from relayllm.protos.protocol import COMMAND_CONTEXTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this device only)")
    parser.add_argument("--model", metavar="GGUF", default=None, help="the SLM (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--cloud", metavar="HOST:PORT", default=None, help="the relay cloud (default: none)")
    parser.add_argument("--token", default=None, help="bearer token for the cloud service")
    parser.add_argument("--api-key", default=os.environ.get("RELAYLLM_API_KEY"),
                        help="require this key from clients (default: $RELAYLLM_API_KEY, else none)")
    parser.add_argument("--mode", default="relay", choices=["relay", "confidence", "r2r", "citer", "local-only"],
                        help="routing when a request does not choose (relay_mode); default relay")
    parser.add_argument("--confidence-threshold", type=float, default=0.4,
                        help="confidence mode: the LLM writes when the SLM's top probability is below this")
    parser.add_argument("--r2r-router", metavar="ONNX", default=None, help="router file for the r2r mode")
    parser.add_argument("--citer-router", metavar="ONNX", default=None, help="router file for the citer mode")
    parser.add_argument("--router-threshold", type=float, default=0.5, help="threshold of the r2r/citer routers")
    parser.add_argument("--call-threshold", type=float, default=None, help="relay mode: see `relayllm generate`")
    parser.add_argument("--command-context", choices=COMMAND_CONTEXTS, default="keep",
                        help="relay mode: see `relayllm generate`")
    parser.add_argument("--max-tokens", type=int, default=256, help="default response tokens per request")
    parser.add_argument("--n-ctx", type=int, default=4096, help="the SLM's context (default 4096)")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds per cloud call (default 10)")
    parser.add_argument("--local-only", action="store_true", help="nothing leaves the device, whatever requests ask")
    parser.add_argument("--daily-llm-tokens", type=int, default=None, help="cloud budget per day, in LLM tokens")
    parser.add_argument("--budget-file", default=None, help="keep the day's count here (survives restarts)")
    parser.add_argument("--redact", action="store_true", help="mask e-mails, phone numbers, long digit runs")
    parser.add_argument("--audit-log", metavar="JSONL", default=None, help="record what left the device")
    parser.add_argument("--audit-text", action="store_true", help="the audit log keeps the exact text sent")


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
    return LocalService(decoder, model=path.stem, mode=args.mode, routers=routers, api_key=args.api_key,
                        max_tokens=args.max_tokens)


def run(args) -> int:
    import uvicorn

    from relayllm.edge.server import create_app

    service = build_service(args)
    print(f"relayllm local: http://{args.host}:{args.port}/v1 (model {service.model}, mode {service.mode})",
          flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning")
    return 0

"""Parts the edge's endpoint, conversation and privacy tests share: a real cloud whose
backend counts calls and records what it was given, and a cloud that hangs (a fault)."""

from __future__ import annotations

import threading


def counting_cloud(smollm2_path, n_ctx: int = 1024):
    """A real cloud (SmolLM2 on llama.cpp, on loopback) whose backend counts prefills and
    generations and records the context each generation ran on (its token ids)."""
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.harness import ServerThread

    class CountingBackend(LlamaCppBackend):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.prefills = self.generations = 0
            self.seen: list = []  # (mode, the whole context's token ids) at each generation

        def prefill(self, session, tokens):
            self.prefills += 1
            return super().prefill(session, tokens)

        def generate(self, session, tokens, **kwargs):
            self.generations += 1
            self.seen.append((session.mode, list(tokens)))
            return super().generate(session, tokens, **kwargs)

        def seen_text(self, i: int = -1) -> str:
            """The text of the context the cloud generated on, at generation `i`."""
            return b"".join(self.token_bytes(t) for t in self.seen[i][1]).decode("utf-8", "replace")

    backend = CountingBackend(str(smollm2_path), n_ctx=n_ctx, max_sessions=4)
    return ServerThread(backend), backend


class HangingRelay:
    """A fault a real cloud cannot produce on demand: Help never answers (until released).
    `cancelled` is set when the client cancels the call."""

    def __init__(self, fingerprint):
        from concurrent import futures

        import grpc

        from relayllm.protos import relay_pb2 as pb
        from relayllm.protos import relay_pb2_grpc

        self.release = threading.Event()
        self.cancelled = threading.Event()
        self.started = threading.Event()
        hang = self

        class Servicer(relay_pb2_grpc.RelayServicer):
            def Info(self, request, context):
                return pb.InfoReply(model="hang", backend="test", tokenizer_fingerprint=fingerprint,
                                    max_tokens_per_call=64)

            def Help(self, request, context):
                context.add_callback(hang.cancelled.set)
                hang.started.set()
                hang.release.wait(60)
                return iter(())

            def EndSession(self, request, context):
                return pb.EndSessionReply()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        relay_pb2_grpc.add_RelayServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.target = f"127.0.0.1:{self.port}"

    def close(self):
        self.release.set()
        self.server.stop(None)

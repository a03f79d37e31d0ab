"""The transformers backend with continuous batching: every greedy Help is one request of
transformers' own ContinuousBatchingManager (paged KV cache, requests of many sessions
decoded together in one forward pass per step), streamed token by token and cancelled
on its own.

    backend = BatchedTransformersBackend(model_dir, max_sessions=64)   # "transformers-batched"

The paged cache holds `num_blocks` pages (default: every session a whole context, max_sessions
x n_ctx / page_size) and a step at most `max_batch_tokens` tokens (default min(n_ctx, 2048)).

What a session keeps: its token list (Session.kv_tokens), as the gateway does, not a KV
cache of its own; each call hands the manager the whole context. The manager's prefix
sharing (`allow_block_sharing`) then reuses the KV of every complete page (`page_size`
tokens) that an earlier request already wrote for the same leading tokens, so a session's
next call recomputes only its last partial page and the delta. The reported usage counts
what the session held against what it sent (the manager does not say what it shared).

Not here: sampling inside the manager. Its sampling settings are one per manager, so a
call with temperature > 0 takes the per-session path of backends/hf.py (its own
DynamicCache, forward passes under a lock) while the manager keeps running; a Sync does
the same. A later greedy call drops that cache and goes back to the manager.
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Callable

import grpc
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from relayllm.cloud.backends.base import FINISH_EOS, FINISH_LENGTH, SamplingParams, Usage, timed
from relayllm.cloud.backends.hf import TransformersBackend
from relayllm.cloud.planning import Refused
from relayllm.cloud.sessions import Session
from relayllm.protos.delta import common_prefix


class BatchedTransformersBackend(TransformersBackend):
    name = "transformers-batched"

    def __init__(self, model_dir_or_path, *, page_size: int = 32, num_blocks: int | None = None,
                 max_batch_tokens: int | None = None, **kwargs):
        super().__init__(model_dir_or_path, **kwargs)
        if page_size < 4:
            raise ValueError(f"page_size must be at least 4 tokens (transformers' paged cache), got {page_size}")
        generation = GenerationConfig(do_sample=False, eos_token_id=sorted(self._eos) or -1,
                                      pad_token_id=self.tokenizer.pad_token_id or 0)
        # Sized from what the service keeps (every session a whole context), not left to
        # transformers: on a CPU it sizes the cache from the machine's RAM (12 GiB for a tiny
        # model in our run).
        pages_per_session = -(-self.n_ctx // page_size)
        config = ContinuousBatchingConfig(
            page_size=page_size, num_blocks=num_blocks or self.sessions.capacity * pages_per_session,
            max_batch_tokens=max_batch_tokens or min(self.n_ctx, 2048), allow_block_sharing=True)
        self.manager = self.model.init_continuous_batching(generation_config=generation,
                                                          continuous_batching_config=config)
        self.manager.start()
        self._outputs: dict[str, queue.Queue] = {}  # request id -> what the manager streams for it
        self._outputs_lock = threading.Lock()
        self._ids = itertools.count()
        self._router = threading.Thread(target=self._route, name="relayllm-cb-router", daemon=True)
        self._router.start()

    def _route(self) -> None:
        """One thread reads the manager's shared output queue and hands each output to its call."""
        for output in self.manager:
            with self._outputs_lock:
                waiting = self._outputs.get(output.request_id)
            if waiting is not None:  # a cancelled call's late outputs are dropped
                waiting.put(output)
        with self._outputs_lock:  # the manager stopped: wake every call still waiting
            for waiting in self._outputs.values():
                waiting.put(None)

    def generate(self, session: Session, tokens: list[int], *, max_new_tokens: int,
                 sampling: SamplingParams, should_stop: Callable[[], str | None],
                 emit: Callable[[int], None]) -> tuple[str, list[int], Usage]:
        if sampling.temperature > 0:  # the manager samples one way for all: the per-session path
            return super().generate(session, tokens, max_new_tokens=max_new_tokens, sampling=sampling,
                                    should_stop=should_stop, emit=emit)
        reused = common_prefix(session.kv_tokens, tokens)
        session.state = None  # a per-session cache (a sampled call's, a Sync's) is stale from now on
        usage = Usage(prefilled_tokens=len(tokens) - reused, reused_tokens=reused)
        session.kv_tokens, session.logits_ready = list(tokens), False
        elapsed = timed()
        request_id = f"relayllm-{next(self._ids)}"
        outputs: queue.Queue = queue.Queue()
        with self._outputs_lock:
            self._outputs[request_id] = outputs
        generated: list[int] = []
        finish = FINISH_LENGTH
        try:
            if self.manager.add_request(list(tokens), request_id=request_id, max_new_tokens=max_new_tokens,
                                        streaming=True, eos_token_id=sorted(self._eos) or -1) is None:
                raise Refused(grpc.StatusCode.UNAVAILABLE,
                              "the batching engine is not accepting requests (stopping or failed)")
            while True:
                stop = should_stop()
                if stop:
                    self.manager.cancel_request(request_id)  # frees its pages at the next step
                    finish = stop
                    break
                try:
                    output = outputs.get(timeout=0.05)
                except queue.Empty:
                    continue
                if output is None or output.error:
                    why = output.error if output is not None else "it stopped"
                    raise Refused(grpc.StatusCode.UNAVAILABLE, f"the batching engine failed: {why}")
                for token in output.generated_tokens[len(generated):]:  # each output holds all tokens so far
                    if self.is_eos(token):
                        finish = FINISH_EOS
                        break
                    emit(token)
                    generated.append(token)
                if finish == FINISH_EOS or output.is_finished():
                    break
        finally:
            with self._outputs_lock:
                self._outputs.pop(request_id, None)
            session.kv_tokens = list(tokens) + generated
        usage.generated_tokens = len(generated)
        usage.generate_s = elapsed()
        return finish, generated, usage

    def close(self) -> None:
        self.manager.stop(block=True, timeout=30)
        self._router.join(timeout=5)

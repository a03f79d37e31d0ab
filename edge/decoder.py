"""The edge decoder: an on-device SLM (llama.cpp) that hands a few tokens to a cloud LLM.

    from relayllm.edge import RelayDecoder, Limits
    from relayllm.edge.client import CloudClient

    decoder = RelayDecoder("slm.gguf", cloud=CloudClient("cloud.example:50051"))
    for event in decoder.stream("What is 17 * 24?"):
        ...                        # TextPiece / CallStarted / CallFinished, last: Result
    result = decoder.generate("What is 17 * 24?")   # or just the Result
    result = decoder.chat([{"role": "user", "content": "Hi"}])  # messages, chat template

How it works. The SLM decodes token by token on llama.cpp's KV cache (edge/decode_loop.py).
When the SLM writes `<call>N</call>` (or the router hook fires, or the prompt itself ends
with a command) the edge asks the cloud for N tokens (clamped by `Limits`), streams them to
the app as they arrive, and appends them to the SLM's context: only those new tokens are
evaluated, never the prefix again (edge/splice.py). The LLM is shown the prompt plus
everything written so far with every command removed, by token ids when both sides share a
tokenizer, else as text.

Offline first. With no cloud, or when a call fails (unreachable, past its deadline, broken
stream, circuit open), the SLM goes on by itself: whatever the LLM had already written is
kept, and the Result says it degraded and why. No call waits past `deadline_s`. With
`sync_every_tokens=K`, every K SLM tokens the text is sent to the cloud in a background
thread (edge/link.py) so that its cache is warm when a call comes. Privacy settings
(local-only, budgets, redaction, audit log) are in edge/privacy.py.

Conversations. `chat(messages)` renders the messages with the GGUF's chat template (user
content never becomes control tokens, edge/chat.py) and keeps the KV cache and the cloud
session between turns: turn two evaluates only its new tokens, and the cloud gets a delta.
`Conversation` (edge/conversation.py) keeps the messages for you.

From a GUI. A decoder owns its llama.cpp context: one request at a time (a second one
raises DecoderBusy), off the UI thread.
- Threaded toolkits (Qt, Tk, wx...): run `for event in decoder.stream(prompt)` in a worker
  thread and post each event to the UI loop (Tk: a queue polled by `after`; see
  edge/desktop.py). To stop, `close()` the generator: decoding stops at the next token
  and an in-flight cloud call is cancelled.
- asyncio: `async for event in decoder.astream(prompt)` (edge/aio.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import AsyncIterator, Iterator

from relayllm.edge.config import Limits, Sampling
from relayllm.edge.errors import EdgeError
from relayllm.edge.events import Event, Result
from relayllm.protos.protocol import COMMAND_CONTEXT_KEY, COMMAND_CONTEXTS, check_command_context

DEFAULT = object()  # "the decoder's own setting" for per-request options


class DecoderBusy(EdgeError):
    """A second request on a decoder that is still answering one."""


def trained_command_context(llama) -> str:
    """The command context a relay SLM's GGUF says it was trained for, else the paper's "keep"."""
    value = (getattr(llama, "metadata", None) or {}).get(COMMAND_CONTEXT_KEY)
    return value if value in COMMAND_CONTEXTS else "keep"


class RelayDecoder:
    """Decodes with an on-device SLM and asks the cloud LLM for help (see the module doc).

    slm: a GGUF path or a llama_cpp.Llama. cloud: a relayllm.edge.client.CloudClient, or
    None (offline). router: an object whose `decide(TokenStep) -> int` returns how many
    tokens the LLM should write from here (0: the SLM writes its candidate). deadline_s:
    per cloud call (the stricter of it and the client's `deadline_s` applies).
    sync_every_tokens: background session sync period (0 = off). chat: apply the GGUF's
    chat template to `stream`/`generate` prompts (a single user turn). privacy: a
    relayllm.edge.privacy.Privacy (local-only, budget per day, redaction, audit log).
    call_threshold: a calibration of how often a relay-trained SLM calls: where its own
    probability of `<call>` reaches it, the SLM writes `<call>` (and then N and `</call>`
    itself: it still chooses how much help). None: its own sampling alone decides.
    command_context: "keep" (the paper's protocol: the command stays in the SLM's context and
    the LLM's tokens follow it) or "drop" (the command's tokens leave the SLM's KV cache before
    the LLM's tokens are spliced in; for an SLM trained on clean-context rows). None: what the
    GGUF records (a relay SLM's export writes protos/protocol.py COMMAND_CONTEXT_KEY), else
    "keep". The protocol as a whole: docs/relay-protocol.md.
    """

    def __init__(self, slm, *, cloud=None, limits: Limits = Limits(), sampling: Sampling = Sampling(),
                 router=None, deadline_s: float = 10.0, sync_every_tokens: int = 0, chat: bool = False,
                 n_ctx: int = 2048, call_threshold: float | None = None, command_context: str | None = None,
                 privacy=None):
        from relayllm.edge.models import load_slm
        from relayllm.edge.privacy import Privacy
        from relayllm.edge.vocab import Vocab

        # 1) The SLM and its vocabulary.
        self.slm = load_slm(slm, n_ctx=n_ctx) if isinstance(slm, (str, Path)) else slm
        self.vocab = Vocab(self.slm)
        self.cloud = cloud
        # 2) The router (a per-token hook), and relay's calibration on a relay-trained SLM.
        self.command_context = check_command_context(command_context or trained_command_context(self.slm))
        self.call_nudge = None  # (id of `<call>`, threshold)
        if call_threshold is not None and router is not None:
            raise ValueError("give a router or a call_threshold, not both")
        if call_threshold is not None or self.command_context == "drop":
            ids = self.vocab.markup("<call>")
            if len(ids) != 1:
                raise ValueError("call_threshold and command_context='drop' need an SLM with `<call>` as one token "
                                 f"(a relay-trained SLM); this one splits it into {len(ids)} tokens")
            self.call_open_id = ids[0]
        if call_threshold is not None:
            if not 0.0 < call_threshold <= 1.0:
                raise ValueError(f"call_threshold must be in (0, 1], got {call_threshold}")
            self.call_nudge = (self.call_open_id, float(call_threshold))
        self.limits = limits
        self.sampling = sampling
        self.router = router
        # 3) Deadlines, sync, privacy.
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        self.deadline_s = min(float(deadline_s), float(getattr(cloud, "deadline_s", None) or deadline_s))
        if sync_every_tokens < 0:
            raise ValueError(f"sync_every_tokens must be >= 0, got {sync_every_tokens}")
        self.sync_every_tokens = int(sync_every_tokens)
        self.chat_template = chat
        self.privacy = privacy if privacy is not None else Privacy()
        self._busy = threading.Lock()
        self._active = None  # the Request being answered
        self._chat_link = None  # the cloud session kept between the turns of a conversation

    # -- public API -----------------------------------------------------------------------
    def stream(self, prompt: str, **options) -> Iterator[Event]:
        """Events as the answer is written; the last one is the Result. Closing the
        generator stops decoding (and cancels a cloud call in flight). Options (`router`,
        `local_only`, `limits`, `sampling`) override the decoder's own for this request."""
        return self.request(prompt, **options).events()

    def generate(self, prompt: str, **options) -> Result:
        return _last(self.stream(prompt, **options))

    def chat(self, messages, *, stream: bool = False, **options):
        """The assistant's reply to `messages` ([{"role", "content"}], system/user/assistant).
        The KV cache and the cloud session are kept between calls, so a conversation's next
        turn evaluates only its new tokens. stream=True: the events, else the Result."""
        events = self.request(messages=messages, **options).events()
        return events if stream else _last(events)

    def astream(self, prompt: str | None = None, *, messages=None, **options) -> AsyncIterator[Event]:
        """`stream` (or `chat` with messages=) for asyncio (edge/aio.py): cancelling stops the
        decoder at the next token and cuts the cloud call in flight at once."""
        from relayllm.edge.aio import astream

        return astream(self.request(prompt, messages=messages, **options))

    async def agenerate(self, prompt: str | None = None, **options) -> Result:
        result = None
        async for event in self.astream(prompt, **options):
            result = event
        return result

    def cancel(self) -> None:
        """From any thread: stop the request being answered at its next token."""
        active = self._active
        if active is not None:
            active.cancel()

    # -- requests -------------------------------------------------------------------------
    def request(self, prompt: str | None = None, *, messages=None, router=DEFAULT, local_only: bool | None = None,
                limits: Limits | None = None, sampling: Sampling | None = None):
        """A decode_loop.Request for a prompt (or chat messages); its events() run it."""
        from relayllm.edge.decode_loop import Request

        # 1) The prompt: plain text (special tokens parsed: the caller writes the model's
        #    input), the one-turn chat template, or messages with user content kept as text.
        if messages is not None:
            prompt_ids, prompt_text = self.template().tokens(self.vocab, messages)
        else:
            prompt_ids, prompt_text = self._prompt(prompt)
        # 2) The link to the cloud: kept across the turns of a conversation.
        local = self.privacy.local_only if local_only is None else bool(local_only)
        if messages is not None and not local:
            if self._chat_link is None:
                self._chat_link = self._link(False)
            link = self._chat_link
        else:
            link = self._link(local)
        if len(prompt_ids) >= self.slm.n_ctx():
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the SLM's context holds {self.slm.n_ctx()}")
        return Request(self, prompt_text, prompt_ids, link=link, router=self.router if router is DEFAULT else router,
                       limits=limits or self.limits, sampling=sampling or self.sampling)

    @property
    def writes_commands(self) -> bool:
        """True when the SLM has `<call>` as one token (a relay-trained SLM). Other SLMs never
        write a command, so they call the cloud only through a router."""
        from relayllm.protos.grammar import OPEN

        return len(self.vocab.markup(OPEN)) == 1

    def prompt_text(self, prompt: str) -> str:
        """The text the SLM is given for `prompt` (the chat template's turn when chat=True)."""
        return self._prompt(prompt)[1]

    def _prompt(self, prompt: str) -> tuple[list[int], str]:
        if not isinstance(prompt, str):
            raise ValueError("give a prompt (str) or messages")
        if self.chat_template:
            return self.template().tokens(self.vocab, [{"role": "user", "content": prompt}])
        return self.vocab.markup(prompt, add_bos=True), prompt

    def _link(self, local_only: bool):
        from relayllm.edge.link import CloudLink

        return CloudLink(self.cloud, self.slm, deadline_s=self.deadline_s, sync_every_tokens=self.sync_every_tokens,
                         privacy=self.privacy, local_only=local_only)

    def template(self):
        if getattr(self, "_template", None) is None:
            from relayllm.edge.chat import ChatTemplate

            self._template = ChatTemplate.of(self.slm)
        return self._template

    def request_started(self, request) -> None:
        if not self._busy.acquire(blocking=False):
            raise DecoderBusy("this decoder is answering another request: one request at a time per decoder "
                              "(wait for it, cancel it, or use a second decoder)")
        self._active = request

    def request_done(self, request) -> None:
        if request.link is not self._chat_link:
            request.link.end()
        self._active = None
        self._busy.release()

    def end_conversation(self) -> None:
        """Forget the cloud session kept between chat turns (the KV cache stays until reused)."""
        link, self._chat_link = self._chat_link, None
        if link is not None:
            link.end()

    def close(self) -> None:
        self.end_conversation()


def _last(events) -> Result:
    result = None
    for event in events:
        result = event
    return result

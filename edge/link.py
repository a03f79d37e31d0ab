"""The decoder's link to the cloud: one session, the background sync, cancel, privacy.

Every byte that leaves the device goes through `CloudLink`: a Help call (`help`) or a
session sync (`maybe_sync`). That is where the user's privacy settings apply: local-only
(nothing is sent), the day's budget in LLM tokens, the redaction hook (with a redactor the
cloud is sent text, rewritten), and the audit log (edge/privacy.py). Not here: what the LLM
is shown (edge/splice.py CloudView) and the decode loop.

The session is made on first use. A sync never blocks decoding (a sync still running is
skipped); a call waits for a sync in flight, bounded by its deadline. `cancel()` cuts the
call in flight at once (used when an asyncio stream or an HTTP client goes away).
"""

from __future__ import annotations

import threading


class CloudLink:
    def __init__(self, cloud, slm, *, deadline_s: float, sync_every_tokens: int = 0, privacy=None,
                 local_only: bool = False):
        from relayllm.edge.privacy import Privacy

        self.cloud = cloud
        self.slm = slm
        self.deadline_s = deadline_s
        self.sync_every_tokens = sync_every_tokens
        self.privacy = privacy or Privacy()
        self.local_only = bool(local_only or self.privacy.local_only)
        self.session = None
        self.token_mode = False
        self.sent_anything = False
        self._sync_thread: threading.Thread | None = None
        self._since_sync = 0
        self._pending_audit: dict | None = None
        self._open_error: Exception | None = None
        self.max_tokens_per_call = 0  # the cloud's, from its Info (0: not known yet, or no cap)

    @property
    def active(self) -> bool:
        """True when text may go to the cloud."""
        return self.cloud is not None and not self.local_only

    # -- what is sent ---------------------------------------------------------------------
    def open_session(self):
        if self.session is None:
            from relayllm.protos.fingerprint import tokenizer_fingerprint

            info = self.cloud.info()
            session = self.cloud.session()
            same = bool(info.tokenizer_fingerprint) and info.tokenizer_fingerprint == tokenizer_fingerprint(self.slm)
            # with a redactor the cloud gets rewritten text, which token ids cannot carry
            self.token_mode = same and self.privacy.redact is None
            self.max_tokens_per_call = int(getattr(info, "max_tokens_per_call", 0) or 0)
            self.session = session
        return self.session

    def _context(self, view) -> dict:
        if self.token_mode:
            return {"tokens": list(view.ids)}
        text = view.whole_text()
        return {"text": self.privacy.redact(text) if self.privacy.redact else text}

    def budget_for(self, n: int) -> int:
        return self.privacy.budget.allow(n)

    def fit_call(self, n: int) -> int:
        """`n` capped at the most tokens one Help call may ask this cloud for (its Info).

        A router or an SLM may ask for more (the llm mode asks for the whole answer); the
        cloud would refuse such a call outright, so the decoder asks for what the cloud
        serves and, when the span should go on, calls again. Opening the session is the
        call's first contact with the cloud: when it fails, `help` raises that error (one
        attempt per call, as the circuit breaker counts them) and the SLM goes on."""
        try:
            self.open_session()
        except Exception as exc:  # offline first: the call reports it
            self._open_error = exc
            return n
        return min(n, self.max_tokens_per_call) if self.max_tokens_per_call > 0 else n

    # -- calls ----------------------------------------------------------------------------
    def help(self, view, n: int, sampling, stopped=None):
        """(stream of pieces, token mode) for a call asking for `n` tokens."""
        if self._open_error is not None:
            error, self._open_error = self._open_error, None
            raise error
        self.wait_for_sync()
        session = self.open_session()
        context = self._context(view)
        self.sent_anything = True
        self._pending_audit = self.privacy.audit.sent(session.id, "help", context, n) if self.privacy.audit else None
        stream = session.help(**context, max_tokens=n, temperature=sampling.temperature, top_p=sampling.top_p,
                              top_k=sampling.top_k, seed=sampling.seed, deadline_s=self.deadline_s,
                              stopped=stopped)
        return stream, self.token_mode

    def last_done(self):
        return getattr(self.session, "last_done", None)

    def spent(self, tokens: int, text: str, error: str | None = None) -> None:
        """After a call: the day's budget and the audit log learn what came back."""
        self.privacy.budget.spend(tokens)
        if self._pending_audit is not None:
            done = self.last_done()
            self.privacy.audit.received(self._pending_audit, tokens, text, error, done)
            self._pending_audit = None

    def cancel(self) -> None:
        """Cut the call in flight now (no-op when none)."""
        session = self.session
        if session is not None:
            session.cancel()

    # -- the background sync ----------------------------------------------------------------
    def maybe_sync(self, view) -> None:
        self._since_sync += 1
        if self._since_sync < self.sync_every_tokens:
            return
        self._since_sync = 0
        if self._sync_thread is not None and self._sync_thread.is_alive():
            return  # the previous sync is still on the wire: never block decoding
        snapshot = _Snapshot(list(view.ids), view.whole_text())
        self._sync_thread = threading.Thread(target=self._sync_job, args=(snapshot,), daemon=True,
                                             name="relayllm-sync")
        self._sync_thread.start()

    def _sync_job(self, snapshot) -> None:
        try:
            session = self.open_session()
            context = self._context(snapshot)
            self.sent_anything = True
            record = self.privacy.audit.sent(session.id, "sync", context, 0) if self.privacy.audit else None
            session.sync(**context, deadline_s=self.deadline_s)
            if record is not None:
                self.privacy.audit.received(record, 0, "", None, None)
        except Exception:  # a failed sync only means a colder cache at the next call
            pass

    def wait_for_sync(self) -> None:
        if self._sync_thread is not None:
            self._sync_thread.join(self.deadline_s + 1.0)

    def end(self) -> None:
        """Forget the cloud session, in the background: a dead cloud must not delay the answer."""
        sync = self._sync_thread
        if self.session is None and sync is None:
            return

        def end() -> None:
            if sync is not None:
                sync.join(self.deadline_s + 1.0)
            target, self.session = self.session, None  # a sync may have opened it meanwhile
            if target is not None:
                try:
                    target.end()
                except Exception:
                    pass

        threading.Thread(target=end, daemon=True, name="relayllm-end-session").start()


class _Snapshot:
    """What a background sync sends: the view's ids and text at the time it started."""

    def __init__(self, ids: list[int], text: str):
        self.ids, self._text = ids, text

    def whole_text(self) -> str:
        return self._text

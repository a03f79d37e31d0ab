"""Cloud benchmarks and the loopback load function, spoken over the real gRPC contract.

The client side is the SDK's own CloudClient/CloudSession (relayllm.edge.client), as a
device would use it; what is measured is the service as a device sees it: tokens
prefilled per call, wall time, bytes on the wire, and the server's own split of each call
(Usage: queue, prefill, generate). Each comparison is
made in the same run on the same server, calls of the two variants alternating.

`run_load` is the load generator the reliability suite reuses: many concurrent sessions
for a bounded time; requests/s, p50/p95/p99 Help latency, errors by status, peak RSS.
`load_in_child` runs it in a separate Python process, so that the clients' threads share
neither the server's GIL nor its process (python -m relayllm.training.bench.cloud load JSON).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from relayllm.edge.client import CircuitBreaker, CloudClient, CloudError, CloudSession
from relayllm.protos import relay_pb2 as pb

# The prompt and the text "the SLM writes" between calls. Fixed text, so that every
# variant of a comparison sees exactly the same deltas.
PROMPT = "Question: A train travels 120 km in 1.5 hours, then 200 km in 2.5 hours. What is its average speed?\nAnswer:"
SLM_TEXT = (
    " First add the distances: 120 km plus 200 km is 320 km in all. Then add the times: "
    "1.5 hours plus 2.5 hours is 4 hours. The average speed is the whole distance divided by "
    "the whole time, so we divide 320 by 4. Let us check each step once more before the end. "
    "The first part of the trip has a speed of 120 / 1.5 = 80 km per hour. The second part "
    "has a speed of 200 / 2.5 = 80 km per hour as well. Both parts have the same speed, so "
    "the average must also be 80 km per hour, which agrees with 320 / 4 = 80. "
)



def client_for(target: str, *, token: str | None = None, deadline_s: float = 120.0) -> CloudClient:
    """The SDK's own client, with a breaker that never opens (a benchmark counts every failure)."""
    return CloudClient(target, token=token, deadline_s=deadline_s, breaker=CircuitBreaker(failures=1 << 30, reset_s=0.0))


@dataclass
class CallRecord:
    """One Help call as the client saw it, with the server's own accounting."""

    wall_s: float  # client: request sent -> Done received
    first_piece_s: float  # client: request sent -> first token
    request_bytes: int  # serialized HelpRequest(s): a resend counts both attempts
    reply_bytes: int  # serialized HelpReply messages, summed
    prefilled_tokens: int
    reused_tokens: int
    generated_tokens: int
    server_s: float
    queue_s: float
    prefill_s: float
    generate_s: float
    text: str = ""
    session_length: int = 0
    session_crc32: int = 0

    @property
    def network_s(self) -> float:
        """Client wall time the server did not account for: wire, (de)serialization, scheduling."""
        return max(0.0, self.wall_s - self.server_s)


def timed_help(session: CloudSession, whole: str, max_tokens: int, *, deadline_s: float = 120.0) -> CallRecord:
    """One CloudSession.help on the whole text (the SDK sends the delta), timed from the client."""
    sent_before = session.stats.bytes_sent
    start = time.perf_counter()
    first = None
    reply_bytes = 0
    pieces: list[str] = []
    for piece in session.help(text=whole, max_tokens=max_tokens, deadline_s=deadline_s):
        if first is None:
            first = time.perf_counter()
        pieces.append(piece.text)
        reply_bytes += pb.HelpReply(piece=piece).ByteSize()
    end = time.perf_counter()
    done = session.last_done
    u = done.usage
    return CallRecord(
        wall_s=end - start, first_piece_s=(first or end) - start, request_bytes=session.stats.bytes_sent - sent_before,
        reply_bytes=reply_bytes + pb.HelpReply(done=done).ByteSize(), prefilled_tokens=u.prefilled_tokens,
        reused_tokens=u.reused_tokens, generated_tokens=u.generated_tokens, server_s=u.server_seconds,
        queue_s=u.queue_seconds, prefill_s=u.prefill_seconds, generate_s=u.generate_seconds, text="".join(pieces),
        session_length=done.session_length, session_crc32=done.session_crc32,
    )


class Conversation:
    """An answer being written: the whole text so far, relayed through one SDK CloudSession."""

    def __init__(self, client: CloudClient):
        self.session = client.session()
        self.text = ""

    def help(self, delta: str, max_tokens: int, *, deadline_s: float = 120.0) -> CallRecord:
        """Help with what was written since the last call (the SDK sends only the delta)."""
        self.text += delta
        record = timed_help(self.session, self.text, max_tokens, deadline_s=deadline_s)
        self.text += record.text
        return record

    def sync(self, delta: str, *, deadline_s: float = 120.0) -> None:
        """Send what was written without asking for tokens (background session sync)."""
        self.text += delta
        self.session.sync(text=self.text, deadline_s=deadline_s)

    def end(self) -> None:
        """The cloud and the SDK forget the session: the next call resends the whole prefix."""
        self.session.end()


def slm_deltas(calls: int, delta_chars: int) -> list[str]:
    """The text the SLM writes before each call: consecutive slices of SLM_TEXT."""
    text = SLM_TEXT * (1 + (calls * delta_chars) // len(SLM_TEXT))
    return [text[i * delta_chars:(i + 1) * delta_chars] for i in range(calls)]


# --- KV reuse vs re-prefill ----------------------------------------------------------------

def prefill_reuse_vs_resend(target: str, *, calls: int = 6, delta_chars: int = 200, max_tokens: int = 16) -> dict:
    """A long answer with `calls` calls, two ways, alternating call by call:
    `session`: each call sends only the delta and the cloud reuses the session's KV cache;
    `resend`: each call sends the whole prefix to a cloud that kept nothing, which prefills it
    all (the reference: a stateless service)."""
    client = client_for(target)
    reuse, resend = Conversation(client), Conversation(client)
    rows = []
    try:
        for i, delta in enumerate(slm_deltas(calls, delta_chars)):
            first = i == 0
            a = reuse.help((PROMPT if first else "") + delta, max_tokens)
            # a cloud without sessions: it forgets between calls (the backend would otherwise
            # find the resent prefix in its cache and reuse it), so the whole prefix is prefilled
            resend.end()
            b = resend.help((PROMPT if first else "") + delta, max_tokens)
            rows.append({"call": i + 1, "session": asdict(a), "resend": asdict(b)})
    finally:
        reuse.end(), resend.end()
        client.close()
    later = rows[1:] or rows  # the first call prefills the prompt either way

    def total(kind, key):
        return sum(r[kind][key] for r in later)

    return {
        "calls": calls, "delta_chars": delta_chars, "max_tokens": max_tokens, "per_call": rows,
        "session_prefilled_tokens": total("session", "prefilled_tokens"),
        "resend_prefilled_tokens": total("resend", "prefilled_tokens"),
        "session_wall_s": total("session", "wall_s"),
        "resend_wall_s": total("resend", "wall_s"),
        "session_prefill_s": total("session", "prefill_s"),
        "resend_prefill_s": total("resend", "prefill_s"),
        "session_request_bytes": total("session", "request_bytes"),
        "resend_request_bytes": total("resend", "request_bytes"),
        "last_call": rows[-1],
    }


def latency_split(records: list[dict]) -> dict:
    """Mean of each part of a Help call: network (client wall - server), queue, prefill, generate."""
    def mean(key):
        return statistics.fmean(r[key] for r in records)

    wall = mean("wall_s")
    server = mean("server_s")
    return {"calls": len(records), "wall_s": wall, "network_s": max(0.0, wall - server), "server_s": server,
            "queue_s": mean("queue_s"), "prefill_s": mean("prefill_s"), "generate_s": mean("generate_s"),
            "first_piece_s": mean("first_piece_s")}


# --- session sync: the cloud's cache warm before the call ------------------------------------

def sync_vs_cold(target: str, *, calls: int = 6, delta_chars: int = 200, max_tokens: int = 16) -> dict:
    """Call latency when the delta arrives with the call (`cold`) vs when it was synced while
    the SLM wrote (`synced`: a Sync RPC before the call, not timed, as it overlaps the SLM)."""
    client = client_for(target)
    cold, synced = Conversation(client), Conversation(client)
    rows = []
    try:
        for i, delta in enumerate(slm_deltas(calls, delta_chars)):
            text = (PROMPT if i == 0 else "") + delta
            a = cold.help(text, max_tokens)
            synced.sync(text)
            b = synced.help("", max_tokens)
            rows.append({"call": i + 1, "cold": asdict(a), "synced": asdict(b)})
    finally:
        cold.end(), synced.end()
        client.close()
    later = rows[1:] or rows
    return {
        "calls": calls, "delta_chars": delta_chars, "max_tokens": max_tokens, "per_call": rows,
        "cold_wall_s": statistics.median(r["cold"]["wall_s"] for r in later),
        "synced_wall_s": statistics.median(r["synced"]["wall_s"] for r in later),
        "cold_prefilled_tokens": statistics.median(r["cold"]["prefilled_tokens"] for r in later),
        "synced_prefilled_tokens": statistics.median(r["synced"]["prefilled_tokens"] for r in later),
        "cold_generate_s": statistics.median(r["cold"]["generate_s"] for r in later),
        "synced_generate_s": statistics.median(r["synced"]["generate_s"] for r in later),
    }


# --- load: many sessions at once -----------------------------------------------------------

def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class LoadReport:
    sessions: int
    duration_s: float
    requests: int
    errors: int
    errors_by_code: dict = field(default_factory=dict)  # CloudError reason -> count
    resends: int = 0  # FAILED_PRECONDITION answered by the SDK resending the whole prefix (evicted session)
    requests_per_s: float = 0.0
    generated_tokens: int = 0
    tokens_per_s: float = 0.0
    latency_p50_s: float = float("nan")
    latency_p95_s: float = float("nan")
    latency_p99_s: float = float("nan")
    first_piece_p50_s: float = float("nan")
    queue_p50_s: float = float("nan")
    peak_rss_mib: float = float("nan")  # of `rss_pid` (the server's process), sampled every 50 ms
    rss_start_mib: float = float("nan")
    prefill_s: float = 0.0  # prefill_first: the untimed phase in which every session synced its prompt
    started_at: float = 0.0  # time.perf_counter() when the clock started (one clock per machine)

    def as_dict(self) -> dict:
        return asdict(self)


def run_load(target: str, *, sessions: int, duration_s: float | None = None, calls_per_session: int | None = None,
             max_tokens: int = 8, delta_chars: int = 120, token: str | None = None, rss_pid: int | None = None,
             timeout: float = 120.0, prompt: str = PROMPT, prefill_first: bool = False) -> LoadReport:
    """`sessions` concurrent relay sessions against `target` on loopback. Each session sends
    `prompt`, then keeps appending `delta_chars` of new text and asking for `max_tokens`
    tokens, like an edge relaying a long answer, until `duration_s` has passed or it has made
    `calls_per_session` calls. The SDK resends the whole prefix when the cloud evicted the
    session (counted as resends); other failures are counted by reason, never raised.

    prefill_first: every session first syncs `prompt` (the cloud prefills it), all sessions
    wait for each other, and only then does the clock start: the timed calls decode, as in
    llama.cpp's batched-bench, whose prefill is timed apart (`prefill_s` here)."""
    if duration_s is None and calls_per_session is None:
        raise ValueError("give duration_s or calls_per_session")
    rss_pid = rss_pid or os.getpid()
    lock = threading.Lock()
    latencies: list[float] = []
    first_pieces: list[float] = []
    queues: list[float] = []
    errors: dict[str, int] = {}
    counters = {"requests": 0, "resends": 0, "tokens": 0}
    stop_at = [float("inf")]  # set when the clock starts
    peak = [_rss_mib(rss_pid)]
    rss_start = peak[0]
    sampling_done = threading.Event()

    def sample_rss():
        while not sampling_done.wait(0.05):
            peak[0] = max(peak[0], _rss_mib(rss_pid))

    client = client_for(target, token=token, deadline_s=timeout)
    prefilled = threading.Barrier(sessions + 1)  # prefill_first: the sessions and the clock

    def count_error(exc: CloudError):
        with lock:
            errors[exc.reason] = errors.get(exc.reason, 0) + 1
            counters["requests"] += 1

    def worker(index: int):
        conversation = Conversation(client)
        deltas = slm_deltas(64, delta_chars)
        synced = False
        if prefill_first:
            try:
                conversation.sync(prompt, deadline_s=timeout)
                synced = True
            except CloudError as exc:
                count_error(exc)
            prefilled.wait()
        made = 0
        while time.perf_counter() < stop_at[0] and (calls_per_session is None or made < calls_per_session):
            delta = (prompt if made == 0 and not synced else "") + deltas[made % len(deltas)]
            resends = conversation.session.stats.resends
            try:
                record = conversation.help(delta, max_tokens, deadline_s=timeout)
            except CloudError as exc:
                count_error(exc)
                conversation, made, synced = Conversation(client), 0, False
                continue
            made += 1
            with lock:
                counters["requests"] += 1
                counters["resends"] += conversation.session.stats.resends - resends
                counters["tokens"] += record.generated_tokens
                latencies.append(record.wall_s)
                first_pieces.append(record.first_piece_s)
                queues.append(record.queue_s)
        conversation.end()

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(sessions)]
    began = start = time.perf_counter()

    def start_clock():
        stop_at[0] = start + duration_s if duration_s is not None else float("inf")

    if not prefill_first:
        start_clock()
    for t in threads:
        t.start()
    if prefill_first:
        prefilled.wait()
        start = time.perf_counter()
        start_clock()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    sampling_done.set()
    sampler.join()
    client.close()
    n_errors = sum(errors.values())
    return LoadReport(
        sessions=sessions, duration_s=elapsed, requests=counters["requests"], errors=n_errors,
        errors_by_code=errors, resends=counters["resends"],
        requests_per_s=(counters["requests"] - n_errors) / elapsed if elapsed > 0 else 0.0,
        generated_tokens=counters["tokens"], tokens_per_s=counters["tokens"] / elapsed if elapsed > 0 else 0.0,
        latency_p50_s=_percentile(latencies, 0.50), latency_p95_s=_percentile(latencies, 0.95),
        latency_p99_s=_percentile(latencies, 0.99), first_piece_p50_s=_percentile(first_pieces, 0.5),
        queue_p50_s=_percentile(queues, 0.5), peak_rss_mib=peak[0], rss_start_mib=rss_start,
        prefill_s=start - began if prefill_first else 0.0, started_at=start,
    )


def concurrency_sweep(target: str, levels=(1, 4, 16, 64), *, calls_per_session: int = 3, max_tokens: int = 8,
                      rss_pid: int | None = None) -> list[dict]:
    """Aggregate tokens/s and latency as the number of concurrent sessions grows. Every level
    does the same work per session (`calls_per_session` calls), so levels compare fairly."""
    return [run_load(target, sessions=n, calls_per_session=calls_per_session, max_tokens=max_tokens,
                     rss_pid=rss_pid).as_dict() for n in levels]


def load_in_child(target: str, *, timeout_s: float = 900.0, **load) -> dict:
    """run_load(target, **load) in a fresh Python process; its LoadReport as a dict. The
    child's own start-up (imports, channel) happens before its clock starts."""
    argv = [sys.executable, "-m", "relayllm.training.bench.cloud", "load", json.dumps({"target": target, **load})]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"the load process failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "load":
        raise SystemExit("usage: python -m relayllm.training.bench.cloud load JSON (run_load's arguments)")
    print(json.dumps(run_load(**json.loads(sys.argv[2])).as_dict()), flush=True)

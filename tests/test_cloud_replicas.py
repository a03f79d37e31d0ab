"""Two cloud replicas on loopback behind client-side balancing (issue 12).

Round-robin (the client picks the next replica for each call) sends a session's calls to
both replicas in turn: the replica that does not hold the session (or holds an older state
of it) answers FAILED_PRECONDITION and the SDK resends the whole prefix; every answer equals
a single server's. With affinity by a hash of the session id there are no resends.
"""

from __future__ import annotations

import zlib

import pytest

PROMPT = "The capital of France is"
DELTAS = [" Paris is also", " Berlin is the capital of", " and Rome is", " The largest city of Italy is"]


@pytest.fixture(scope="module")
def replicas(smollm2_path):
    """Two replicas, and a third server alone for the reference answers."""
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.harness import ServerThread

    backends = [LlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=4, n_threads=1) for _ in range(3)]
    servers = [ServerThread(b) for b in backends]
    yield servers
    for server, backend in zip(servers, backends):
        server.stop()
        backend.close()


def test_round_robin_resends_and_never_answers_wrong(replicas):
    from relayllm.edge.client import CloudClient

    clients = [CloudClient(s.target, deadline_s=60) for s in replicas[:2]]
    reference = CloudClient(replicas[2].target, deadline_s=60)
    try:
        session = clients[0].session()
        text = PROMPT
        for call, delta in enumerate([""] + DELTAS):
            session.client = clients[call % 2]  # client-side round-robin: each call to the next replica
            text += delta
            answer = "".join(p.text for p in session.help(text=text, max_tokens=4))
            # a fresh session on a server of its own, on the whole text: what a single server says
            assert answer == "".join(p.text for p in reference.session().help(text=text, max_tokens=4)), text
            text += answer
        # each call after the first found the other replica without (or with an older) state
        assert session.stats.resends == len(DELTAS)
        assert [len(s.backend.sessions) for s in replicas[:2]] == [1, 1]
    finally:
        for c in [*clients, reference]:
            c.close()


def test_affinity_by_session_id_hash_needs_no_resends(replicas):
    from relayllm.edge.client import CloudClient

    clients = [CloudClient(s.target, deadline_s=60) for s in replicas[:2]]
    try:
        for _ in range(4):
            session = clients[0].session()
            # the balancer's rule: the replica at hash(session_id) % replicas, for every call
            home = clients[zlib.crc32(session.id.encode()) % len(clients)]
            session.client = home
            text = PROMPT
            for delta in [""] + DELTAS:
                text += delta
                text += "".join(p.text for p in session.help(text=text, max_tokens=4))
            assert session.stats.resends == 0
    finally:
        for c in clients:
            c.close()

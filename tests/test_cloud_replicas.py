"""Two cloud replicas on loopback behind client-side balancing (issue 12).

Round-robin sends a session's calls to both replicas in turn: the replica that does not
hold the session (or holds an older state of it) answers FAILED_PRECONDITION and the SDK
resends the whole prefix; every answer equals a single server's. With affinity by a hash
of the session id there are no resends.
"""

from __future__ import annotations

import zlib

import grpc
import pytest

from relayllm.protos import relay_pb2_grpc as pbg

PROMPT = "The capital of France is"
DELTAS = [" Paris is also", " Berlin is the capital of", " and Rome is", " The largest city of Italy is"]


@pytest.fixture(scope="module")
def replicas(smollm2_path):
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.harness import ServerThread

    backends = [LlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=4, n_threads=1) for _ in range(2)]
    servers = [ServerThread(b) for b in backends]
    yield servers
    for server, backend in zip(servers, backends):
        server.stop()
        backend.close()


def converse(client, reference=None):
    """A session of len(DELTAS)+1 calls; returns the texts (checked against `reference`)."""
    session = client.session()
    text, answers = PROMPT, []
    for delta in [""] + DELTAS:
        text += delta
        answer = "".join(p.text for p in session.help(text=text, max_tokens=4))
        answers.append(answer)
        if reference is not None:
            # a fresh session on one replica, on the whole text: what a single server says
            expected = "".join(p.text for p in reference.session().help(text=text, max_tokens=4))
            assert answer == expected, (text, answer, expected)
        text += answer
    return answers, session.stats.resends


def test_round_robin_resends_and_never_answers_wrong(replicas):
    from relayllm.edge.client import CloudClient

    target = "ipv4:" + ",".join(s.target for s in replicas)
    with CloudClient(target, deadline_s=60) as balanced, CloudClient(replicas[0].target, deadline_s=60) as one:
        # client-side balancing: every call goes to the next replica
        balanced.channel.close()
        balanced.channel = grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
        balanced.stub = pbg.RelayStub(balanced.channel)
        answers, resends = converse(balanced, reference=one)
    assert resends >= 2, "the calls must have crossed replicas"
    assert all(answers)
    served = [len(s.backend.sessions) for s in replicas]
    assert all(n > 0 for n in served), served


def test_affinity_by_session_id_hash_needs_no_resends(replicas):
    from relayllm.edge.client import CloudClient

    clients = [CloudClient(s.target, deadline_s=60) for s in replicas]
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

"""Fixtures the gateway's test modules share: the relay service in front of the module's own
`gateway` fixture (an OpenAIGatewayBackend on a real engine), and a client of it.

    from gateway_fixtures import client, cloud, text_of  # noqa: F401 - fixtures by name
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cloud(gateway):
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread

    with ServerThread(gateway, config=ServerConfig(max_tokens_per_call=400)) as server:
        yield server


@pytest.fixture()
def client(cloud):
    from relayllm.edge.client import CloudClient

    with CloudClient(cloud.target, deadline_s=120) as client:
        yield client


def text_of(session, **kw) -> str:
    return "".join(p.text for p in session.help(**kw))


def evicted_session_is_resent(client, engine, gateway, prompt: str) -> None:
    """A session pushed out of the gateway by as many others as it keeps: its next call is
    refused (FAILED_PRECONDITION), the SDK resends the whole prefix once, and the text is the
    engine's own for that prefix, never another session's."""
    session = client.session()
    first = text_of(session, text=prompt, max_tokens=3)
    for i in range(gateway.sessions.capacity):
        text_of(client.session(), text=f"Other session {i}", max_tokens=1)
    whole = prompt + first + " And the capital of Italy is"
    assert text_of(session, text=whole, max_tokens=4) == engine.complete(whole, 4)["choices"][0]["text"]
    assert session.stats.resends == 1

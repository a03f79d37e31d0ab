"""Operating the cloud service (issue 12): graceful drain, Prometheus metrics, settings from a
TOML file, the environment and flags; tokens never from the command line; TLS required with
tokens unless allowed. Real llama.cpp, real gRPC, a real HTTP scrape.
"""

from __future__ import annotations

import threading
import urllib.request

import grpc
import pytest

from relayllm.protos import relay_pb2 as pb
from relayllm.protos import relay_pb2_grpc as pbg


@pytest.fixture(scope="module")
def backend(smollm2_path):
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=2, n_threads=1)
    yield backend
    backend.close()


def test_drain_goes_not_serving_lets_streams_finish_then_stops(backend):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread

    server = ServerThread(backend, config=ServerConfig(max_tokens_per_call=400))
    channel = grpc.insecure_channel(server.target)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="relayllm.v1.Relay"),
                                                     timeout=60)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stream = pbg.RelayStub(channel).Help(pb.HelpRequest(
        session_id="in-flight", context=pb.Context(text="Once upon a time"), max_tokens=120), timeout=60)
    pieces = [next(stream)]
    stopper = threading.Thread(target=server.stop, args=(30.0,))
    stopper.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    done = None
    for reply in stream:  # the call in flight finishes with everything it asked for
        if reply.HasField("piece"):
            pieces.append(reply.piece)
        else:
            done = reply.done
    assert done is not None and done.usage.generated_tokens == len(pieces)
    assert done.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS)
    stopper.join(30)
    assert not stopper.is_alive()
    with pytest.raises(grpc.RpcError) as err:  # then it is gone
        pbg.RelayStub(channel).Info(pb.InfoRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def _scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_are_scraped_per_tenant(backend):
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread
    from relayllm.cloud.metrics import Metrics
    from relayllm.edge.client import CloudClient, CloudError

    metrics = Metrics.serving(0, "127.0.0.1")
    config = ServerConfig(tokens={"tok-a": "team-a", "tok-b": "team-b"})
    try:
        with ServerThread(backend, config=config, metrics=metrics) as server:
            with CloudClient(server.target, token="tok-a", deadline_s=30) as a:
                session = a.session()
                first = "".join(p.text for p in session.help(text="The capital of France is", max_tokens=3))
                list(session.help(text="The capital of France is" + first + " and", max_tokens=3))
                for i in range(3):  # more sessions than the cache holds: evictions
                    list(a.session().help(text=f"Session {i}", max_tokens=1))
            with CloudClient(server.target, token="tok-b", deadline_s=30) as b:
                list(b.session().help(text="Hello", max_tokens=2))
            with CloudClient(server.target, token="wrong", deadline_s=30) as bad:
                with pytest.raises(CloudError):
                    list(bad.session().help(text="Hello", max_tokens=2))
            seen = _scrape(metrics.port)
    finally:
        metrics.close()

    def value(name, **labels):
        return seen.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("relayllm_calls_total", method="Help", tenant="team-a", code="OK") == 5
    assert value("relayllm_calls_total", method="Help", tenant="team-b", code="OK") == 1
    assert value("relayllm_calls_total", method="Help", tenant="", code="UNAUTHENTICATED") == 1
    assert value("relayllm_tokens_total", kind="generated", tenant="team-a") == 3 + 3 + 3
    assert value("relayllm_tokens_total", kind="reused", tenant="team-a") > 0
    assert value("relayllm_cache_hits_total", tenant="team-a") == 1
    assert value("relayllm_cache_evictions_total", tenant="team-a") >= 2
    assert value("relayllm_call_seconds_count", method="Help", tenant="team-a") == 5
    assert value("relayllm_sessions") == 2
    assert "tok-a" not in str(seen)  # tenants are labels, tokens never


def test_settings_file_environment_and_flags(tmp_path):
    from relayllm.cloud.errors import ServiceError
    from relayllm.cloud.settings import load

    config = tmp_path / "relay.toml"
    config.write_text('model = "m.gguf"\nport = 6000\nmax_queue_s = 5\nmax_sessions = 4\n')
    tokens = tmp_path / "tokens"
    tokens.write_text("# team tokens\nsecret-1:team-a\nsecret-2:team-b\n")
    env = {"RELAYLLM_PORT": "7000", "RELAYLLM_MAX_CALL_S": "9.5", "RELAYLLM_TOKENS_FILE": str(tokens),
           "RELAYLLM_INSECURE": "1"}
    s = load({"config": str(config), "port": None, "max_sessions": 3}, environ=env)
    assert s.model == "m.gguf" and s.port == 7000 and s.max_sessions == 3  # file < environment < flags
    assert s.server.max_queue_s == 5 and s.server.max_call_s == 9.5 and s.server.max_sessions == 3
    assert s.server.tokens == {"secret-1": "team-a", "secret-2": "team-b"}
    assert load({}, environ={"RELAYLLM_TOKENS": "t1:x,t2:y", "RELAYLLM_INSECURE": "true"}).server.tokens == \
        {"t1": "x", "t2": "y"}
    bad = [
        ({}, {"RELAYLLM_TOKENS": "t1:x"}, "TLS"),  # tokens in clear text: not unless allowed
        ({}, {"RELAYLLM_PORT": "many"}, "RELAYLLM_PORT"),
        ({}, {"RELAYLLM_MAX_QUEUE_S": "-1"}, "max_queue_s"),
        ({}, {"RELAYLLM_TOKENS": "no-tenant", "RELAYLLM_INSECURE": "1"}, "TOKEN:TENANT"),
        ({"tls_cert": str(tmp_path / "none.pem")}, {}, "not found"),
    ]
    for flags, environ, word in bad:
        with pytest.raises(ServiceError) as err:
            load(flags, environ=environ)
        assert word in str(err.value), (word, str(err.value))
    config.write_text('modle = "typo.gguf"\n')
    with pytest.raises(ServiceError) as err:
        load({"config": str(config)}, environ={})
    assert "modle" in str(err.value)


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    from relayllm.protos.cli import main

    assert main(["serve", "--version"]) == 0
    assert version("relayllm") in capsys.readouterr().out

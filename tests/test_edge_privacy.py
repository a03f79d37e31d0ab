"""Privacy the user controls: local-only, budgets in LLM tokens, redaction, the audit log,
each checked against what a real cloud on loopback received."""

from __future__ import annotations

import pytest

from edge_parts import counting_cloud

PROMPT = "Write to jane.doe@example.com or call +1 415 555 0199 about order 12345678. The sea is"


@pytest.fixture(scope="module")
def slm(smollm2_path):
    from relayllm.edge import load_slm

    return load_slm(smollm2_path, n_ctx=512)


@pytest.fixture(scope="module")
def cloud(smollm2_path):
    server, backend = counting_cloud(smollm2_path, n_ctx=512)
    with server:
        yield server, backend


def _decoder(slm, cloud, privacy, **kw):
    from relayllm.edge import Limits, RelayDecoder
    from relayllm.edge.client import CloudClient
    from relayllm.edge.routers import AlwaysLLMRouter

    client = CloudClient(cloud[0].target)
    return RelayDecoder(slm, cloud=client, privacy=privacy, router=AlwaysLLMRouter(4),
                        limits=Limits(max_total_tokens=12, **kw)), client


def test_redact_personal_masks_emails_phones_and_long_numbers():
    from relayllm.edge import redact_personal

    out = redact_personal(PROMPT)
    assert "jane.doe" not in out and "415" not in out and "12345678" not in out
    assert out.count("[email]") == out.count("[phone]") == out.count("[number]") == 1
    assert redact_personal("in 2024 I had 3 cats") == "in 2024 I had 3 cats"


def test_local_only_sends_nothing_and_says_so(slm, cloud):
    from relayllm.edge import Privacy

    _, backend = cloud
    before = (backend.prefills, backend.generations)
    decoder, client = _decoder(slm, cloud, Privacy(local_only=True))
    result = decoder.generate(PROMPT)
    per_request = _decoder(slm, cloud, Privacy())[0].generate(PROMPT, local_only=True)
    client.close()
    assert result.local_only and result.llm_tokens == 0 and result.calls == 0 and not result.degraded
    assert per_request.local_only and per_request.calls == 0
    assert (backend.prefills, backend.generations) == before


def test_redaction_and_audit_log_match_what_the_cloud_received(slm, cloud, tmp_path):
    from relayllm.edge import AuditLog, Privacy, redact_personal

    _, backend = cloud
    audit = AuditLog(tmp_path / "audit.jsonl", with_text=True)
    decoder, client = _decoder(slm, cloud, Privacy(redact=redact_personal, audit=audit))
    before = backend.generations
    result = decoder.generate(PROMPT)
    client.close()
    records = audit.records()
    assert result.calls == len(records) == backend.generations - before > 0
    for i, record in enumerate(records):
        received = backend.seen_text(before + i - backend.generations)
        # what the log says left the device is exactly what the cloud generated on
        assert record["sent_text"] == received and record["sent_chars"] == len(received)
        assert "jane.doe" not in received and "[email]" in received and "12345678" not in received
        assert record["received_tokens"] > 0 and record["received_text"]
        assert record["session"] and record["kind"] == "help" and record["time"] > 0
    # the next call was sent the text plus what came back
    assert records[1]["sent_text"].startswith(records[0]["sent_text"] + records[0]["received_text"][:1])
    # without with_text the log keeps sizes only
    quiet = AuditLog(tmp_path / "sizes.jsonl")
    decoder, client = _decoder(slm, cloud, Privacy(audit=quiet))
    decoder.generate(PROMPT)
    client.close()
    assert quiet.records() and all("sent_text" not in r and r["sent_tokens"] > 0 for r in quiet.records())


def test_cloud_budget_per_request_and_per_day(slm, cloud, tmp_path):
    from relayllm.edge import DailyBudget, Privacy

    per_request = _decoder(slm, cloud, Privacy(), max_llm_tokens=5)[0].generate(PROMPT)
    assert per_request.llm_tokens <= 5 and per_request.llm_tokens > 0
    budget = DailyBudget(6, path=tmp_path / "budget.json")
    decoder, client = _decoder(slm, cloud, Privacy(budget=budget))
    first = decoder.generate(PROMPT)
    second = decoder.generate(PROMPT)
    client.close()
    assert first.llm_tokens + second.llm_tokens == 6 == budget.used()
    assert second.degraded and any("budget" in r for r in second.degraded_reasons)
    assert DailyBudget(6, path=tmp_path / "budget.json").allow(4) == 0  # kept across restarts

"""A conversation with the edge decoder: the messages kept for you, the KV cache kept between turns.

    from relayllm.edge import Conversation, RelayDecoder
    talk = Conversation(RelayDecoder("slm.gguf", cloud=client), system="Be brief.")
    print(talk.say("What is 17 * 24?").text)
    for event in talk.stream("And times 2?"):   # events, as RelayDecoder.stream
        ...

Each turn goes through `RelayDecoder.chat`: the model's own chat template, user content as
plain text, and prefix reuse in the KV cache, so turn two evaluates only its new tokens
(Result.prompt_evaluated_tokens) and the cloud session follows by delta. Not here: the
HTTP endpoint (edge/server.py), which gets the whole message list with every request.
"""

from __future__ import annotations

from typing import Iterator

from relayllm.edge.events import Event, Result


class Conversation:
    def __init__(self, decoder, *, system: str | None = None):
        self.decoder = decoder
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []

    def stream(self, text: str, **options) -> Iterator[Event]:
        """The reply's events; the reply joins the conversation when its Result arrives."""
        messages = self.messages + [{"role": "user", "content": text}]
        result = None
        for event in self.decoder.chat(messages, stream=True, **options):
            if isinstance(event, Result):
                result = event
            yield event
        if result is not None:
            self.messages = messages + [{"role": "assistant", "content": result.text}]

    def say(self, text: str, **options) -> Result:
        result = None
        for event in self.stream(text, **options):
            result = event
        return result

    def close(self) -> None:
        self.decoder.end_conversation()

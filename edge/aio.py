"""asyncio for the edge decoder: `async for event in decoder.astream(prompt)`.

Decoding runs in a worker thread and its events come through an asyncio.Queue, so the event
loop never blocks. Cancelling the task (or `aclose()` on the iterator) stops the decoder at
the next token and cancels the cloud call in flight at once (it does not wait for the
call's deadline). Not here: decoding itself (edge/decode_loop.py).
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator

from relayllm.edge.events import Event


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


async def astream(request) -> AsyncIterator[Event]:
    """The events of a decode_loop.Request, produced in a worker thread.

    1. The worker iterates the request's events and posts each to the loop.
    2. The awaiting side yields them; an exception in the worker is raised here.
    3. On the way out (end, error, cancel, aclose), the request is cancelled: the decoder
       stops at the next token and the cloud call is cut, then the worker is joined."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    def post(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            request.cancel()

    def work() -> None:
        events = request.events()
        try:
            for event in events:
                post(event)
        except BaseException as exc:  # handed to the awaiting side, raised there
            post(_Failure(exc))
        finally:
            events.close()
            post(end)

    worker = threading.Thread(target=work, name="relayllm-decoder", daemon=True)
    worker.start()
    finished = False
    try:
        while True:
            item = await queue.get()
            if item is end:
                finished = True
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        if not finished:
            request.cancel()
        if worker.is_alive():
            await asyncio.to_thread(worker.join)

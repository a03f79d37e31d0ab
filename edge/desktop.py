"""A small desktop app on the edge SDK (Tk): streams an answer, the cloud's words highlighted,
with a local-only switch.

    python -m relayllm.edge.desktop [--model GGUF] [--cloud HOST:PORT]

The decoder runs in a worker thread; its events go through a queue that the Tk loop polls
with `after` (Tk is not thread-safe). `--prompt X --screenshot out.png` answers X, saves a
screenshot of the window (ImageMagick's `import`) and exits: the test runs it under Xvfb.
An example of the SDK, not part of it: nothing else imports this module.
"""

from __future__ import annotations

import argparse
import queue
import subprocess
import threading


def build(root, decoder):
    """The window: a question box, Ask, a local-only switch, the answer (cloud spans highlighted)."""
    import tkinter as tk

    from relayllm.edge.events import Result, TextPiece

    root.title("relayllm desktop")
    top = tk.Frame(root)
    top.pack(fill="x", padx=8, pady=8)
    question = tk.Entry(top, width=60)
    question.pack(side="left", fill="x", expand=True)
    local_only = tk.BooleanVar(value=False)
    tk.Checkbutton(top, text="local only", variable=local_only).pack(side="left", padx=6)
    answer = tk.Text(root, width=80, height=16, wrap="word")
    answer.pack(fill="both", expand=True, padx=8)
    answer.tag_configure("llm", background="#cde8ff", foreground="#003a70")
    status = tk.Label(root, anchor="w", text="the cloud's words are highlighted")
    status.pack(fill="x", padx=8, pady=4)
    events: queue.Queue = queue.Queue()
    state = {"done": threading.Event()}

    def work(text: str, local: bool) -> None:
        for event in decoder.stream(text, local_only=local):
            events.put(event)

    def ask(_=None) -> None:
        answer.delete("1.0", "end")
        state["done"].clear()
        status.config(text="writing...")
        threading.Thread(target=work, args=(question.get(), local_only.get()), daemon=True).start()

    def poll() -> None:
        while True:
            try:
                event = events.get_nowait()
            except queue.Empty:
                break
            if isinstance(event, TextPiece):
                answer.insert("end", event.text, ("llm",) if event.author == "llm" else ())
            elif isinstance(event, Result):
                where = "nothing left this device" if event.local_only else f"{event.calls} cloud calls"
                status.config(text=f"{event.slm_tokens} tokens on the device, {event.llm_tokens} from the cloud; "
                                   f"{where}" + (f"; degraded: {event.degraded_reasons[0]}" if event.degraded else ""))
                state["done"].set()
        root.after(30, poll)

    tk.Button(top, text="Ask", command=ask).pack(side="left")
    question.bind("<Return>", ask)
    root.after(30, poll)
    return question, ask, state


def main(argv=None) -> int:
    import tkinter as tk

    from relayllm.edge.decoder import RelayDecoder
    from relayllm.edge.models import load_slm
    from relayllm.protos import registry
    from relayllm.edge.routers import ConfidenceRouter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--cloud", default=None)
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--screenshot", default=None)
    args = parser.parse_args(argv)
    client = None
    if args.cloud:
        from relayllm.edge.client import CloudClient

        client = CloudClient(args.cloud)
    decoder = RelayDecoder(load_slm(registry.resolve_model(args.model or registry.DEFAULT_SLM)), cloud=client, chat=True,
                           router=ConfidenceRouter(0.5, run=4) if client else None)
    root = tk.Tk()
    question, ask, state = build(root, decoder)
    if args.prompt:
        question.insert(0, args.prompt)
        root.after(200, ask)
    if args.screenshot:
        def shoot() -> None:
            if not state["done"].is_set():
                root.after(100, shoot)
                return
            root.update()
            subprocess.run(["import", "-window", str(root.winfo_id()), "-frame", args.screenshot], check=False)
            if not open(args.screenshot, "rb").read(4):
                subprocess.run(["import", "-window", "root", args.screenshot], check=True)
            root.destroy()
        root.after(500, shoot)
    root.mainloop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

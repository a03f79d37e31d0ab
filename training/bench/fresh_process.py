"""Run a benchmark part in a new Python process.

A process where llama.cpp has computed from one thread runs it slower from another: the
cloud sweep's anchor ran in the main thread, then the cloud's engine in its own, and a
1-sequence SmolLM2 step went from 6.8 ms to 10-11 ms. So the anchor and the cloud each get a
fresh (spawned) process, and neither inherits the other's llama.cpp threads.
"""

from __future__ import annotations


def in_fresh_process(fn, *args, **kwargs):
    """fn(*args, **kwargs) in a new, spawned Python process; its output goes to this one's."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def say_in_child(msg: str) -> None:
    """Progress from a part run by in_fresh_process (a module function: it crosses the spawn)."""
    print(f"[bench] {msg}", flush=True)

"""A system in a process of its own, for timing it beside another.

Two decoders that each bring an OpenMP thread pool slow each other down when they share a process, even when
only one of them is running: on a 2-core Xeon the speech-LLM decoded at RTF 0.024 alone and 0.041 in the same
process once faster-whisper (CTranslate2, with its own copy of libgomp) had decoded a single batch, with a
third of the CPU left idle (docs/speed_findings.md). `OMP_WAIT_POLICY=PASSIVE` gave the same 0.041 without
faster-whisper: after the other runtime has run, torch's worker threads sleep between operations instead of
spinning, and every operation waits for them to wake. Timing each system in a child process of its own, one
request at a time, keeps the comparison about the decoders.

    fw = Isolated("faster_whisper", batch_size=8)         # built in a spawned process
    out = fw.decode(utts)                                 # any method, by name: arguments and result are pickled
    fw.close()
"""
from __future__ import annotations

import multiprocessing as mp


def _serve(conn, name: str, kwargs: dict, torch_threads: int | None) -> None:
    """The child: build the system, then answer ``(method, args, kwargs)`` requests until None arrives (or the
    parent is gone)."""
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    from speechlm_lib.evaluation.systems import SYSTEMS

    try:
        system = SYSTEMS.build(name, **kwargs)
    except Exception as e:  # sent back and raised in the parent (SystemUnavailable, a bad folder, ...)
        conn.send(("error", e))
        return
    conn.send(("ok", None))
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the parent ended without closing
            return
        if request is None:
            return
        method, args, kw = request
        try:
            conn.send(("ok", getattr(system, method)(*args, **kw)))
        except Exception as e:
            conn.send(("error", e))


class Isolated:
    """`SYSTEMS.build(name, **kwargs)` in a spawned process; its methods are called through a pipe.

    `torch_threads`: torch threads in the child (None: torch's default). Errors raised in the child (building or
    decoding) are raised here. A child that dies raises `RuntimeError` naming the system."""

    def __init__(self, name: str, torch_threads: int | None = None, **kwargs):
        ctx = mp.get_context("spawn")  # a fresh interpreter: no thread pool inherited from this one
        self.name = name
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, name, kwargs, torch_threads), daemon=True)
        self._proc.start()
        child.close()
        try:
            self._reply()
        except BaseException:
            self.close()
            raise

    def _reply(self):
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the process running system {self.name!r} ended "
                               f"(exit code {self._proc.exitcode})") from None
        if status == "error":
            raise value
        return value

    def call(self, method: str, *args, **kwargs):
        """``system.method(*args, **kwargs)`` in the child; its result, pickled."""
        self._conn.send((method, args, kwargs))
        return self._reply()

    def __getattr__(self, method: str):
        """``isolated.method(...)`` is ``call("method", ...)``, so it stands in for the system it runs."""
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)

    def close(self) -> None:
        """End the child (also on garbage collection of a daemon process at exit)."""
        if self._proc.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

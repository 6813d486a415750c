"""Prefect's ephemeral server, tied to the lifetime of the process that started it.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server (uvicorn) as a child process and
stops it from an ``atexit`` hook. A ``kill -9`` (or the OOM killer) skips that hook, and the server
keeps running — holding a port and ~300 MB — after the run is gone.

:func:`own_ephemeral_server` starts that server itself, before any flow runs, and hands its pid to a
**watchdog**: a tiny stdlib-only Python process that blocks reading a pipe from this process. The
kernel closes the pipe when this process ends, however it ends; the watchdog then stops whatever is
still running of what it was told to watch (SIGTERM, then SIGKILL after a grace period) and exits.
On a normal exit Prefect has already stopped the server, so the watchdog finds nothing to do. On
Linux the watchdog holds a pidfd for each process, so it can never signal a recycled pid.

Prefect looks the server up as a per-process singleton (``SubprocessASGIServer()``), so the flows
then use this very server; with ``PREFECT_API_URL`` set nothing is started and nothing is watched.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

# The watchdog: reads pids (one per line) from stdin until EOF, then stops those still running.
# stdlib only and tiny (~20 ms, ~10 MB), so it costs nothing next to the server it guards.
_WATCHDOG = r"""
import os, select, signal, sys, time
grace = float(sys.argv[1])
procs = []
for line in sys.stdin:
    pid = int(line)
    try:
        handle = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    except OSError:
        continue  # already gone
    procs.append((pid, handle))

def alive(pid, handle):
    if handle is not None:
        return not select.select([handle], [], [], 0)[0]  # a pidfd turns readable when the process exits
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False

def send(pid, handle, sig):
    try:
        signal.pidfd_send_signal(handle, sig) if handle is not None else os.kill(pid, sig)
    except OSError:
        pass

left = [p for p in procs if alive(*p)]
for p in left:
    send(*p, signal.SIGTERM)
deadline = time.monotonic() + grace
while left and time.monotonic() < deadline:
    time.sleep(0.1)
    left = [p for p in left if alive(*p)]
for p in left:
    send(*p, signal.SIGKILL)
"""

#: seconds a watched process gets to stop on SIGTERM before SIGKILL (uvicorn finishing its start-up
#: handles SIGTERM only once it is up)
GRACE_S = 15.0


class Watchdog:
    """A child process that stops the processes it is told about once this process is gone."""

    def __init__(self, grace_s: float = GRACE_S):
        # its own session: Ctrl-C in the terminal (SIGINT to the foreground group) must not take the
        # watchdog down before this process has stopped the server itself
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _WATCHDOG, str(grace_s)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, text=True,
        )

    def watch(self, pid: int) -> None:
        """Stop ``pid`` (SIGTERM, then SIGKILL) when this process ends, if it is still running then."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{pid}\n")
        self.proc.stdin.flush()


_watchdog: Watchdog | None = None


def watchdog() -> Watchdog:
    """This process's watchdog, started on first use."""
    global _watchdog
    if _watchdog is None or _watchdog.proc.poll() is not None:
        _watchdog = Watchdog()
    return _watchdog


def own_ephemeral_server() -> str | None:
    """Start Prefect's temporary local server now, watched; returns its API URL (None with ``PREFECT_API_URL``).

    Call before running a flow in a process that has no ``PREFECT_API_URL``: the flow then reports to
    this server, and the server cannot outlive the process (see the module docstring).
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server: Any = SubprocessASGIServer()
    if not server.running:
        # hand each launched process to the watchdog the moment it exists (Prefect relaunches on
        # another port when the first one is taken), not after the 10-20 s health wait
        launch = server._run_uvicorn_command
        guard = watchdog()

        def launch_watched() -> subprocess.Popen:
            proc = launch()
            guard.watch(proc.pid)
            return proc

        server._run_uvicorn_command = launch_watched
        try:
            server.start()
        finally:
            del server._run_uvicorn_command  # back to the class's method
    return server.api_url


__all__ = ["Watchdog", "own_ephemeral_server", "watchdog"]

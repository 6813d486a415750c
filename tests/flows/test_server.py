"""A Prefect-mode run killed with ``kill -9`` leaves no Prefect server (and no watchdog) behind.

These start the real CLI in Prefect mode (no ``PREFECT_API_URL``: Prefect's ephemeral server), find
the uvicorn server it starts, ``kill -9`` the CLI and check every process of that run is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SFTFLOW = str(Path(sys.executable).parent / "sftflow")
SERVER_MARK = "prefect.server.api.server:create_app"

pytestmark = [pytest.mark.prefect, pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")]


def _children(pid: int) -> dict[int, str]:
    """pid → command line of the live (non-zombie) children of ``pid``."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            out[int(d.name)] = cmd
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (init here) has not reaped it yet


def _wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Name a river in country {i}.",
                                        "output": f"The river Example-{i} flows through country {i}."}) + "\n"
                            for i in range(40)))
    r = tmp_path / "r.yaml"
    r.write_text(f"name: orphan-test\nsources: [{data}]\nstages:\n  - quality: {{}}\n")
    return r


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect_home"),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


@pytest.mark.parametrize("when", ["server starting", pytest.param("flow running", marks=pytest.mark.slow)])
def test_kill_9_of_a_prefect_run_leaves_no_server(tmp_path, recipe, when):
    run_dir = tmp_path / "run"
    cli = subprocess.Popen([SFTFLOW, "curate", "--recipe", str(recipe), "--out", str(run_dir)], cwd=tmp_path,
                           env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server: list[int] = []
    try:
        assert _wait_for(lambda: cli.poll() is not None or any(SERVER_MARK in c for c in _children(cli.pid).values()),
                         120), "the CLI started no Prefect server"
        assert cli.poll() is None, "the CLI ended before it could be killed"
        kids = _children(cli.pid)
        server = [p for p, c in kids.items() if SERVER_MARK in c]
        watchdogs = [p for p, c in kids.items() if "pidfd_open" in c or "-I -c" in c]
        assert len(server) == 1 and len(watchdogs) == 1, kids
        if when == "flow running":  # the server is up and the flow is writing the run folder
            assert _wait_for(lambda: (run_dir / "curate").exists() or cli.poll() is not None, 180)
            assert cli.poll() is None, "the run finished before it could be killed"
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        # the watchdog stops the server (SIGTERM; SIGKILL after its grace period) and then exits
        assert _wait_for(lambda: not _running(server[0]), 40), "the Prefect server outlived its run"
        assert _wait_for(lambda: not _running(watchdogs[0]), 10), "the watchdog did not exit"
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        for pid in server:  # never leave a server behind, even when the test fails
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_watchdog_stops_what_it_watches_when_its_owner_dies(tmp_path):
    """The mechanism alone, without Prefect: owner killed → watched process stopped, watchdog gone."""
    code = (
        "import subprocess, sys, time\n"
        "from flows.server import watchdog\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "watchdog().watch(child.pid)\n"
        "print(child.pid, watchdog().proc.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    child = guard = 0
    try:
        child, guard = map(int, owner.stdout.readline().split())
        assert _running(child) and _running(guard)
        owner.kill()
        owner.wait()
        assert _wait_for(lambda: not _running(child), 20)
        assert _wait_for(lambda: not _running(guard), 10)
    finally:
        for pid in (child, guard):
            if pid and _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_every_flow_running_command_starts_the_watched_server(tmp_path, monkeypatch):
    """`sftflow experiment` runs Prefect flows: it must start the watched server first, like `run` and `curate`
    (a SIGTERM'd experiment once left its Prefect server running)."""
    import yaml
    from typer.testing import CliRunner

    import flows.experiments
    import flows.server
    from flows.cli import app

    calls: list[str] = []
    monkeypatch.setattr(flows.server, "own_ephemeral_server", lambda: calls.append("server"))

    def fake_flow(recipe, out, command):
        calls.append("flow")
        return {"markdown": "done", "run_dir": str(tmp_path)}

    monkeypatch.setattr(flows.experiments, "curation_flow", fake_flow)
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "Say hi.", "output": "hi"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "sources": [str(src)], "experiment": {"kind": "curation"},
                                      "train": {"model": "tiny-random-llama"}}))
    res = CliRunner().invoke(app, ["experiment", "--recipe", str(recipe)])
    assert res.exit_code == 0, res.output
    assert calls == ["server", "flow"]

"""Peak memory of the demo, per step: what each of curate → split → train → eval → report holds.

    python bench/demo_memory.py                  # the demo recipe, its steps in one process (--local)
    python bench/demo_memory.py --prefect        # + the whole `sftflow demo` (Prefect mode), as `make demo` runs it

Per step, in one process (the steps of `sftflow demo --local`, which the Prefect tasks wrap): the peak
RSS during the step (``VmHWM``, reset before each step through ``/proc/self/clear_refs``) and the RSS
left when it ends (what the next step starts from: models still referenced, caches). With
``--prefect``: the peak RSS of the `sftflow demo` process and, apart, of the Prefect server it starts
(``wait4`` / ``VmHWM`` of each). Target (issue #17): the demo's peak RSS <= 3 GiB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GiB = 2**30
TARGET_GIB = 3.0


def _status(field: str, pid: str = "self") -> int:
    """A ``/proc/<pid>/status`` field in bytes (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def steps(sets: list[str], out: Path) -> None:
    """The demo's steps in this process, with the peak and the remaining RSS of each."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import flows  # noqa: F401  (registers the services the demo's stages use)
    from flows import runner
    from flows.recipe import load_recipe
    from flows.report import build_report

    recipe = load_recipe(REPO / "configs" / "demo.yaml", sets)
    rd = runner.new_run_dir(recipe, out / "run")
    print(f"{'step':<10} {'peak RSS GiB':>13} {'RSS after GiB':>14} {'seconds':>8}")
    print(f"{'(start)':<10} {'':>13} {_status('VmRSS') / GiB:>14.2f}")
    split: dict = {}
    overall = 0
    for name, fn in [
        ("curate", lambda: runner.step_curate(recipe, rd)),
        ("split", lambda: split.update(runner.step_split(recipe, rd))),
        ("train", lambda: runner.step_train(recipe, split["train"], rd)),
        ("eval", lambda: runner.step_eval(recipe, rd, split["heldout"])),
        ("report", lambda: build_report(rd)),
    ]:
        _reset_peak()
        t = time.perf_counter()
        fn()
        peak = _status("VmHWM")
        overall = max(overall, peak)
        print(f"{name:<10} {peak / GiB:>13.2f} {_status('VmRSS') / GiB:>14.2f} {time.perf_counter() - t:>8.0f}",
              flush=True)
    print(f"{'all steps':<10} {overall / GiB:>13.2f}   (target <= {TARGET_GIB} GiB: "
          f"{'met' if overall <= TARGET_GIB * GiB else 'NOT met'})")


def prefect_demo(sets: list[str], out: Path) -> None:
    """`sftflow demo` as `make demo` runs it: peak RSS of its process and of the Prefect server it starts."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(out / "prefect_home"))
    cmd = [str(Path(sys.executable).parent / "sftflow"), "demo", "--out", str(out / "prefect-run"),
           *[x for s in sets for x in ("--set", s)]]
    servers: dict[int, int] = {}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=out)
    done = threading.Event()

    def watch_server() -> None:  # the server's VmHWM, read while it lives
        while not done.is_set():
            for d in Path("/proc").iterdir():
                if d.name.isdigit():
                    try:
                        if b"prefect.server.api.server:create_app" in (d / "cmdline").read_bytes():
                            servers[int(d.name)] = max(servers.get(int(d.name), 0), _status("VmHWM", d.name))
                    except OSError:
                        pass
            time.sleep(1)

    watcher = threading.Thread(target=watch_server, daemon=True)
    watcher.start()
    t = time.perf_counter()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    watcher.join()
    code = os.waitstatus_to_exitcode(status)
    server = max(servers.values(), default=0)
    print(f"\n`sftflow demo` (Prefect mode): exit {code}, {time.perf_counter() - t:.0f} s; peak RSS of the demo process "
          f"{usage.ru_maxrss * 1024 / GiB:.2f} GiB (target <= {TARGET_GIB} GiB), of the Prefect server "
          f"{server / GiB:.2f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, as for sftflow")
    ap.add_argument("--prefect", action="store_true", help="also run `sftflow demo` in Prefect mode")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}; overrides {args.sets or 'none'}\n")
    with tempfile.TemporaryDirectory(prefix="sftflow-demo-memory-") as tmp:
        steps(args.sets, Path(tmp))
        if args.prefect:
            prefect_demo(args.sets, Path(tmp))


if __name__ == "__main__":
    main()

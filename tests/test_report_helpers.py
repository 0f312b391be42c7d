"""Shared pieces of the report tests (no tests here): a store made by a real short
suite run, stores with hand-written rows for edge cases, and a headless-Chromium
driver speaking the Chrome DevTools protocol over a pipe (no extra packages)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from suite.executors import run_local
from suite.profiles import build_specs
from suite.store import Store

TRAIN = dict(max_steps=40, eval_every=10, batch_size=16, eval_batch_size=500, lr=1e-2, probe_every=20)
TASKS = (("adding", {"T": 10, "n_val": 200, "n_test": 200}),
         ("copy", {"T": 5, "n_copy": 3, "n_val": 200, "n_test": 200}))


def specs(models=("rnn", "lstm"), seeds="0-2", tasks=TASKS, train=None, model_args=None):
    out = []
    for task, args in tasks:
        out += build_specs(task=[task], model=list(models), task_args=args,
                           model_args={"hidden_size": 16, **(model_args or {})},
                           train={**TRAIN, **(train or {})}, seeds=seeds, device="cpu")
    return out


def real_store(path: Path, **kw: Any) -> Path:
    """A store filled by the real runner: adding T=10 and copy T=5, rnn and lstm, 3 seeds."""
    todo = specs(**kw)
    store = Store(path)
    store.add_runs(todo)  # registered as pending first, as `rnnbench run` does
    store.close()
    run_local(todo, path)
    return path


def copy_store(src: Path, dst: Path) -> Path:
    """Copy a store file (WAL checkpointed first, so the copy is complete)."""
    s = Store(src)
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    shutil.copy(src, dst)
    return dst


def add_failed(path: Path, spec, reason: str = "RuntimeError: out of memory") -> None:
    """Record ``spec`` as a failed run, exactly as the executor does when training raises."""
    s = Store(path)
    s.add_runs([spec])
    assert s.claim(spec.run_id)
    s.finish(spec.run_id, "failed", None, reason)
    s.close()


def edit_summaries(path: Path, where: str, **changes: Any) -> int:
    """Multiply summary values of runs matching the SQL ``where`` by the given factors."""
    s = Store(path)
    rows = s.db.execute(f"SELECT run_id, summary FROM runs WHERE {where}").fetchall()
    for run_id, text in rows:
        summary = json.loads(text)
        for key, factor in changes.items():
            summary[key] = summary[key] * factor
        s.db.execute("UPDATE runs SET summary=? WHERE run_id=?", (json.dumps(summary), run_id))
    s.close()
    return len(rows)


# -- headless Chromium over the DevTools protocol -----------------------------------

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


class Browser:
    """Chromium with ``--remote-debugging-pipe``: commands go to its fd 3, replies and
    events come from its fd 4, each a JSON message ended by a NUL byte."""

    def __init__(self, profile_dir: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child, before exec: the pipe ends become fds 3 and 4
            # Move both above 4 first: a pipe end may itself be fd 3 or 4, and dup2 onto
            # itself would leave it close-on-exec.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome_r, from_chrome_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.log_path = Path(profile_dir) / "chromium.log"
        self._log = open(self.log_path, "wb")  # a file, not a pipe: a full pipe would stall chromium
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
             f"--user-data-dir={profile_dir}", "--remote-debugging-pipe", "--enable-logging=stderr", "--v=0",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            preexec_fn=fds, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._read(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def open(self, url: str) -> None:
        """A new tab attached in flat mode, with console, log and network events on, at ``url``."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False})
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = True) -> None:
        import base64

        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, error log entries, and any request
        that would leave the machine (anything but data: and file: URLs)."""
        out = []
        for ev in self.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry'].get('text')}")
            elif m == "Network.requestWillBeSent":
                url = p.get("request", {}).get("url", "")
                if not url.startswith(("data:", "file:", "about:")):
                    out.append(f"network request: {url}")
        return out

    def console_log(self) -> list[str]:
        """Console messages chromium wrote to its log (``--enable-logging=stderr``)."""
        return [line for line in self.log_path.read_text(errors="replace").splitlines() if ":CONSOLE" in line]

    def close(self) -> None:
        """Stop chromium (its log stays in ``log_path``)."""
        self.session = None  # Browser.close is a browser-level command
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


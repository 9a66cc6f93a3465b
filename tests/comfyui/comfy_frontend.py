"""ComfyUI's real web frontend in headless Chromium (the system browser, driven by playwright over CDP).

Nothing is downloaded: Chromium comes from the system (``apt-get install chromium``), playwright from the package
registry (never ``playwright install``). Every request to a host other than the ComfyUI server is aborted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


class Frontend:
    """One headless Chromium with one page on the ComfyUI server at ``url``; use as a context manager."""

    def __init__(self, url: str, chromium: str, viewport: tuple[int, int] = (1600, 1000)) -> None:
        self.url, self.chromium, self.viewport = url, chromium, viewport
        self.console_errors: list[str] = []

    def __enter__(self) -> "Frontend":
        from playwright.sync_api import sync_playwright

        self._profile = tempfile.mkdtemp(prefix="icm_chromium_")
        command = [self.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", "--disable-background-networking", "--disable-component-update",
                   "--disable-sync", f"--user-data-dir={self._profile}", "--remote-debugging-address=127.0.0.1",
                   "--remote-debugging-port=0", "about:blank"]
        self._browser_process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
        endpoint = self._devtools_endpoint()
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.connect_over_cdp(endpoint)
        context = self.browser.contexts[0] if self.browser.contexts else self.browser.new_context()
        self.page = context.new_page()
        self.page.set_viewport_size({"width": self.viewport[0], "height": self.viewport[1]})
        origin = self.url.rstrip("/")
        self.page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(origin)
                        else route.abort())
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.goto(self.url, wait_until="domcontentloaded", timeout=120_000)
        self.page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph"
                                    " && Object.keys(window.LiteGraph.registered_node_types).length > 100",
                                    timeout=120_000)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.browser.close()
            self._playwright.stop()
        finally:
            if self._browser_process.poll() is None:
                os.killpg(self._browser_process.pid, signal.SIGTERM)
                try:
                    self._browser_process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self._browser_process.pid, signal.SIGKILL)
            shutil.rmtree(self._profile, ignore_errors=True)

    def _devtools_endpoint(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._browser_process.stderr.readline()
            if match := re.search(r"DevTools listening on (ws://\S+)", line or ""):
                return match.group(1)
            if not line and self._browser_process.poll() is not None:
                break
        raise RuntimeError("Chromium did not start (no DevTools endpoint)")

    def evaluate(self, script: str, argument: object = None) -> object:
        return self.page.evaluate(script, argument)

    def load_workflow(self, workflow: dict, name: str = "workflow") -> None:
        self.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }",
                      [workflow, name])

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=str(path))

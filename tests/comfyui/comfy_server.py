"""One real ComfyUI server for a whole test session (loopback only, CPU), driven over its HTTP and websocket API.

The server runs ``main.py --cpu`` from a ComfyUI tree in a throw-away ``--base-directory`` that holds this pack (a
symlink in ``custom_nodes/``), the test models and the test inputs. Tests queue API-format prompts, read the
history (status, execution messages, outputs) and the websocket events (progress, executing) of their own prompts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@dataclass
class PromptRun:
    """What one queued prompt did: ``status`` is ``success``, ``error`` or ``interrupted``."""

    prompt_id: str
    status: str
    outputs: dict
    messages: list
    events: list = field(default_factory=list)

    def message(self, kind: str) -> dict | None:
        return next((data for name, data in self.messages if name == kind), None)

    @property
    def cached_nodes(self) -> set[str]:
        cached = self.message("execution_cached")
        return set(cached["nodes"]) if cached else set()

    @property
    def error(self) -> dict | None:
        return self.message("execution_error")

    def files(self, node_id: str, kind: str = "images") -> list[dict]:
        return list(self.outputs.get(node_id, {}).get(kind, []))


class ComfyServer:
    """A ComfyUI process and a websocket listener; ``run(prompt)`` queues a prompt and waits for its end."""

    def __init__(self, comfy_dir: Path, python: str, packs: dict[str, Path], models_dir: Path, base_dir: Path,
                 shims: Path | None = None) -> None:
        self.comfy_dir, self.python, self.base_dir = Path(comfy_dir), python, Path(base_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.events: list[tuple[float, dict]] = []
        self._lock = threading.Lock()
        self._socket = None
        for folder in ("custom_nodes", "input", "output", "temp", "user/default/workflows", "user/default/subgraphs"):
            (self.base_dir / folder).mkdir(parents=True, exist_ok=True)
        for name, folder in packs.items():
            link = self.base_dir / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(Path(folder).resolve(), target_is_directory=True)
        if not (self.base_dir / "models").exists():
            (self.base_dir / "models").symlink_to(Path(models_dir).resolve(), target_is_directory=True)
        settings = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
        (self.base_dir / "user" / "default" / "comfy.settings.json").write_text(json.dumps(settings))
        self.log_path = self.base_dir / "server.log"
        self.shims = shims
        self.process: subprocess.Popen | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 240.0) -> None:
        env = dict(os.environ)
        if self.shims is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.shims), env.get("PYTHONPATH", "")]))
        command = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", str(self.base_dir), "--database-url", "sqlite:///:memory:",
                   "--disable-auto-launch", "--disable-api-nodes"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.comfy_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} during start-up:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                break
            except OSError:
                time.sleep(0.5)
        else:
            self.stop()
            raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")
        self._listen()

    def stop(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            except OSError:
                pass
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # ---------------------------------------------------------------- HTTP
    def request(self, method: str, path: str, payload: object | None = None, timeout: float = 60.0) -> object:
        data = None if payload is None else json.dumps(payload).encode()
        headers = {} if payload is None else {"Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def get(self, path: str) -> object:
        return self.request("GET", path)

    def object_info(self, node_id: str | None = None) -> dict:
        info = self.get("/object_info" + (f"/{node_id}" if node_id else ""))
        return info[node_id] if node_id else info

    def copy_inputs(self, folder: Path) -> None:
        for path in Path(folder).iterdir():
            if path.is_file():
                shutil.copy2(path, self.base_dir / "input" / path.name)

    # ---------------------------------------------------------------- prompts
    def queue(self, prompt: dict) -> str:
        try:
            answer = self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as error:
            raise AssertionError(f"prompt rejected: {error.read().decode(errors='replace')[:4000]}") from error
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 900.0) -> PromptRun:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and self._finished(entry):
                return self._result(prompt_id, entry)
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        self.request("POST", "/interrupt", {})
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 900.0) -> PromptRun:
        return self.wait(self.queue(prompt), timeout)

    def interrupt(self) -> None:
        self.request("POST", "/interrupt", {})

    def prompt_events(self, prompt_id: str) -> list[tuple[float, dict]]:
        with self._lock:
            return [(t, e) for t, e in self.events if e.get("data", {}).get("prompt_id") == prompt_id]

    def wait_for_event(self, predicate, timeout: float = 600.0) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = next(((t, e) for t, e in self.events if predicate(e)), None)
            if found:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"no matching websocket event within {timeout:.0f} s")

    def output_path(self, file: dict) -> Path:
        return self.base_dir / file.get("type", "output") / file.get("subfolder", "") / file["filename"]

    @staticmethod
    def _finished(entry: dict) -> bool:
        names = {name for name, _ in entry["status"].get("messages", [])}
        return bool(names & {"execution_success", "execution_error", "execution_interrupted"})

    def _result(self, prompt_id: str, entry: dict) -> PromptRun:
        messages = entry["status"].get("messages", [])
        names = {name for name, _ in messages}
        status = ("interrupted" if "execution_interrupted" in names
                  else "error" if "execution_error" in names else "success")
        time.sleep(0.1)  # the last websocket frames of this prompt
        return PromptRun(prompt_id, status, entry.get("outputs", {}), messages,
                         [e for _, e in self.prompt_events(prompt_id)])

    # ---------------------------------------------------------------- websocket
    def _listen(self) -> None:
        import websocket  # websocket-client (test requirement)

        self._socket = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}",
                                                   timeout=30)
        self._socket.settimeout(None)

        def receive() -> None:
            while True:
                try:
                    frame = self._socket.recv()
                except (OSError, websocket.WebSocketException):
                    return
                if isinstance(frame, str) and frame:
                    with self._lock:
                        self.events.append((time.monotonic(), json.loads(frame)))

        threading.Thread(target=receive, name="comfy-websocket", daemon=True).start()

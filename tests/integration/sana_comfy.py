"""Helpers of the integration tier: importing the pack like ComfyUI, the tiny variants, a server driver."""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_PACKAGE = "sana_tt_pack"
SERVER_START_TIMEOUT = 240


def pack_module(name: str) -> types.ModuleType:
    """Import `nodes.<x>` / `temporal_tiling.<x>` of the pack as ComfyUI does (a package, relative imports),
    without running the package __init__ files, so these tests only need the modules they exercise."""
    if PACK_PACKAGE not in sys.modules:
        for pkg, path in ((PACK_PACKAGE, PACK_ROOT), (f"{PACK_PACKAGE}.nodes", PACK_ROOT / "nodes")):
            module = types.ModuleType(pkg)
            module.__path__ = [str(path)]
            sys.modules[pkg] = module
    return importlib.import_module(f"{PACK_PACKAGE}.{name}")


def _source_node(io_type: str) -> str:
    """A registered stand-in node with one output of `io_type`, for links in a validated prompt."""
    import nodes

    name = f"_TestSource_{io_type}"

    class Source:
        RETURN_TYPES = (io_type,)
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls) -> dict:
            return {"required": {}}

    nodes.NODE_CLASS_MAPPINGS.setdefault(name, Source)
    return name


def validation_errors(node, links: dict[str, str] | None = None, **widgets) -> str | None:
    """What ComfyUI's own prompt validation (``execution.validate_inputs``: conversions, ranges, link types,
    then the node's ``validate_inputs``) says about one node; None when it is accepted.

    Widgets not given take their defaults; a widget given as None is turned into an input (linked); every
    required socket and each of ``links`` (input -> type) is linked to a stand-in node of that type."""
    import asyncio

    import execution
    from comfy_api.latest import io

    import nodes

    UserInputError = pack_module("temporal_tiling.errors").UserInputError
    schema = node.define_schema()
    nodes.NODE_CLASS_MAPPINGS[schema.node_id] = node
    prompt, inputs = {}, {}

    def link(name: str, io_type: str) -> list:
        prompt[name] = {"class_type": _source_node(io_type), "inputs": {}}
        return [name, 0]

    for spec in schema.inputs:
        if spec.id in widgets:
            value = widgets[spec.id]
            inputs[spec.id] = link(f"src_{spec.id}", spec.get_io_type()) if value is None else value
        elif spec.id in (links or {}):
            inputs[spec.id] = link(f"src_{spec.id}", links[spec.id])
        elif not spec.optional and isinstance(spec, io.WidgetInput):
            inputs[spec.id] = spec.options[0] if spec.default is None else spec.default
        elif not spec.optional:
            inputs[spec.id] = link(f"src_{spec.id}", spec.get_io_type())
    prompt["1"] = {"class_type": schema.node_id, "inputs": inputs}
    try:
        valid, errors, _ = asyncio.run(execution.validate_inputs("test", prompt, "1", {}))
    except UserInputError as error:
        return str(error)
    return None if valid else "\n".join(f"{e['message']}: {e['details']}" for e in errors)


# file name -> original_state_dict options (tiny 64-wide, 2 layers, 8 latent channels, 32-wide captions)
TINY_VARIANTS = {
    "tiny_sana_1k.safetensors": {},
    "tiny_sana_pe1.safetensors": {"pe_scale": 1.0},
    "tiny_sana_pe2.pth": {"pe_scale": 2.0},
    "tiny_sana15_qknorm.safetensors": {"qk_norm": True},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server subprocess; `run(graph)` posts an API workflow and waits for its history entry."""

    def __init__(self, comfyui: Path, base: Path, log: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [
            sys.executable,
            "main.py",
            "--cpu",
            "--listen", "127.0.0.1",
            "--port", str(self.port),
            "--base-directory", str(base),  # models, custom_nodes, input, output, temp, user
            "--database-url", f"sqlite:///{base / 'comfyui.db'}",  # its default lies in the ComfyUI tree
            "--preview-method", "latent2rgb",
            "--disable-auto-launch",
            *extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, cwd=comfyui, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1.0)
        raise RuntimeError(f"ComfyUI did not start in {SERVER_START_TIMEOUT} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict) -> dict:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return {"http_error": exc.code, **json.loads(exc.read() or b"{}")}

    def run(self, graph: dict, timeout: float = 300) -> dict:
        """Queue an API-format graph; returns its history entry (outputs and status)."""
        answer = self.post("/prompt", {"prompt": graph, "client_id": "sana-tests"})
        if "prompt_id" not in answer:
            return answer
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{answer['prompt_id']}")
            if answer["prompt_id"] in history:  # an entry appears once the prompt succeeded or failed
                return history[answer["prompt_id"]]
            time.sleep(0.5)
        raise TimeoutError(f"prompt did not finish in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def _previews(url: str, graph: dict, timeout: float) -> tuple[dict, list[bytes]]:
    """Queue `graph` over a websocket session; returns (history entry, preview image bytes)."""
    import aiohttp

    client_id = "sana-preview-test"
    previews: list[bytes] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": graph, "client_id": client_id}) as r:
                prompt_id = (await r.json())["prompt_id"]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = await ws.receive(timeout=timeout)
                if message.type == aiohttp.WSMsgType.BINARY:
                    event = int.from_bytes(message.data[:4], "big")
                    if event == 1:  # PREVIEW_IMAGE: event, image format, image bytes
                        previews.append(message.data[8:])
                elif message.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(message.data)
                    done = data["type"] == "executing" and data["data"].get("node") is None
                    if (done and data["data"].get("prompt_id") == prompt_id) or data[
                        "type"
                    ] == "execution_error":
                        break
        async with session.get(f"{url}/history/{prompt_id}") as r:
            return (await r.json()).get(prompt_id, {}), previews


def run_with_previews(server: ComfyServer, graph: dict, timeout: float = 300) -> tuple[dict, list[bytes]]:
    import asyncio

    return asyncio.run(_previews(server.url, graph, timeout))


def stock_node_outputs(node_class: type, **inputs) -> tuple:
    """A stock node's outputs, called as ComfyUI's executor calls it on the installed version: a V3 node's
    `execute` classmethod, or a V1 node's method named by FUNCTION (newer cores keep those V1 names on
    ported nodes only as aliases marked for removal)."""
    if hasattr(node_class, "define_schema"):
        return tuple(node_class.execute(**inputs).result)
    return tuple(getattr(node_class(), node_class.FUNCTION)(**inputs))

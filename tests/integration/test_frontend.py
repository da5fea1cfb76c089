"""The front-end extension in a real browser: headless Chromium (Debian's package) opens ComfyUI's UI with
the pack loaded, loads workflow (a) and the Tile Planner node shows the plan, redrawn when a widget changes.

Driven through the Chrome DevTools Protocol with aiohttp (ComfyUI's own dependency). The workflow then runs
from the browser (the embedded model, or the tiny test model before it is built) and Quality Metrics shows its
numbers on the node. The last screenshot is kept at $SANA_SCREENSHOT (e.g. docs/tile_planner.png) if set.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sana_comfy import PACK_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1600, 1000)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    "--remote-debugging-port=0",
]

EMBEDDED = "seamlab-sana (embedded)"
TINY = "tiny_sana_diffusers/"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


class DevTools:
    """Minimal CDP client: one page, commands awaited by id, console errors and exceptions collected."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.next_id = 0
        self.errors: list[str] = []

    async def send(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.socket.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = json.loads((await self.socket.receive()).data)
            if message.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(message["params"]["exceptionDetails"])[:500])
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str):
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {json.dumps(result['exceptionDetails'])[:800]}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if await self.evaluate(expression):
                    return
            except RuntimeError:
                pass
            await asyncio.sleep(0.5)
        raise TimeoutError(f"browser: {expression} stayed false for {timeout} s")

    async def screenshot(self):
        from PIL import Image

        data = (await self.send("Page.captureScreenshot", format="png"))["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def _colourful(image, box) -> int:
    """Pixels inside ``box`` with clearly saturated colour (the plan's tile outlines and numbers)."""
    import numpy as np

    hsv = np.asarray(image.crop(box).convert("HSV"))
    return int(((hsv[..., 1] > 120) & (hsv[..., 2] > 120)).sum())


def _find(node_id: str) -> str:
    """JS expression for the first node of type ``node_id`` in the graph."""
    return f"app.graph.nodes.find(n => n.type === '{node_id}')"


PLANNER = _find("SanaTemporalTilePlanner")
METRICS = _find("SanaTemporalTileMetrics")


def _set_widgets(node: str, values: dict) -> str:
    """JS that sets widgets of ``node`` and redraws the canvas."""
    sets = "".join(
        f"n.widgets.find(w => w.name === {json.dumps(k)}).value = {json.dumps(v)};" for k, v in values.items()
    )
    redraw = "app.canvas.setDirty(true, true); app.canvas.draw(true, true);"
    return f"(() => {{ const n = {node}; {sets} {redraw} return 1; }})()"


@contextlib.asynccontextmanager
async def _comfy_page(url: str, port_file: Path):
    """DevTools on ComfyUI's page with the pack's node types registered."""
    import aiohttp

    deadline = time.monotonic() + 60
    while not port_file.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    port = int(port_file.read_text().split()[0])
    async with aiohttp.ClientSession() as http:
        targets = await (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        page = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            tools = DevTools(socket)
            await tools.send("Runtime.enable")
            await tools.send("Page.enable")
            await tools.send("Page.navigate", url=url)
            await tools.wait_for("!!(window.app && window.app.graph && window.app.canvas)")
            await tools.wait_for("!!LiteGraph.registered_node_types['SanaTemporalTilePlanner']")
            yield tools


def _in_browser(server, session):
    """Run ``session(url, port_file)`` against a headless Chromium started for it."""
    profile = Path(tempfile.mkdtemp(prefix="sana-chromium-"))
    browser = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return asyncio.run(session(server.url, profile / "DevToolsActivePort"))
    finally:
        browser.terminate()
        browser.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


async def _session(url: str, port_file: Path) -> dict:
    """Load workflow (a), screenshot the planner as loaded, after a widget change, with an impossible plan,
    then run the workflow from the browser and screenshot the planner and the metrics node."""
    async with _comfy_page(url, port_file) as tools:
        workflow = (PACK_ROOT / "workflows" / "txt2img_temporal_tiling.json").read_text()
        await tools.evaluate(f"app.loadGraphData({workflow}).then(() => true)")
        await asyncio.sleep(1.0)
        await tools.evaluate("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click()); 1")
        box = await tools.evaluate(
            f"""(() => {{
              const node = {PLANNER};
              const ds = app.canvas.ds;
              ds.scale = 1.0;
              ds.offset = [-node.pos[0] + 40, -node.pos[1] + 40];
              app.canvas.setDirty(true, true); app.canvas.draw(true, true);
              const x = (node.pos[0] + ds.offset[0]) * ds.scale;
              const y = (node.pos[1] + ds.offset[1]) * ds.scale;
              const rect = app.canvas.canvas.getBoundingClientRect();
              return [rect.left + x, rect.top + y, rect.left + x + node.size[0] * ds.scale,
                      rect.top + y + node.size[1] * ds.scale];
            }})()"""
        )
        preview_box = (int(box[0]), int(box[3] - 210), int(box[2]), int(box[3]))
        await asyncio.sleep(1.0)
        shots = {"box": preview_box, "before": await tools.screenshot()}
        await tools.evaluate(_set_widgets(PLANNER, {"tile_width": 256, "overlap": 64}))
        await asyncio.sleep(1.0)
        shots["after"] = await tools.screenshot()
        await tools.evaluate(_set_widgets(PLANNER, {"overlap": 512}))
        await asyncio.sleep(1.0)
        shots["invalid"] = await tools.screenshot()
        await tools.evaluate(_set_widgets(PLANNER, {"tile_width": 128, "overlap": 32}))
        choices = await tools.evaluate(
            "app.graph.nodes.find(n => n.type === 'SanaTemporalCheckpointLoader')"
            ".widgets.find(w => w.name === 'ckpt_name').options.values"
        )
        if EMBEDDED not in choices:  # a fresh checkout before the model is built: the tiny test model
            await tools.evaluate(
                _set_widgets(
                    "app.graph.nodes.find(n => n.type === 'SanaTemporalCheckpointLoader')",
                    {"ckpt_name": TINY},
                )
            )
            await tools.evaluate(
                _set_widgets(
                    "app.graph.nodes.find(n => n.type === 'SanaTemporalCausalSampler')", {"steps": 2}
                )
            )
        await tools.evaluate("app.queuePrompt(0, 1).then(() => true)")
        await tools.wait_for(f"!!({METRICS}.sanaReport && {PLANNER}.sanaExecutedPlan)", timeout=600)
        await asyncio.sleep(1.0)
        shots["ran"] = await tools.screenshot()
        shots["report"] = await tools.evaluate(f"{METRICS}.sanaReport")
        shots["errors"] = tools.errors
        return shots


def test_tile_planner_draws_the_plan_live_and_metrics_show_on_the_node(server):
    shots = _in_browser(server, _session)
    out = os.environ.get("SANA_SCREENSHOT")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shots["ran"].save(out)
    assert [e for e in shots["errors"] if "tile_plan_preview" in e] == []
    box = shots["box"]
    drawn = _colourful(shots["before"], box)
    assert drawn > 500, f"no plan drawn on the Tile Planner ({drawn} coloured px)"
    import numpy as np

    difference = np.abs(
        np.asarray(shots["after"].crop(box), float) - np.asarray(shots["before"].crop(box), float)
    )
    assert difference.mean() > 1.0, "the plan did not follow the widgets"
    assert _colourful(shots["invalid"], box) < drawn / 2, "an impossible plan still draws tiles"
    assert _colourful(shots["ran"], box) > 500, "the plan vanished after the run"
    assert any(line.startswith("gradient ratio") for line in shots["report"]), shots["report"]


WORKFLOWS = (
    "txt2img_temporal_tiling",
    "upscale_temporal_tiling",
    "upscale_split_img2img_blend",
    "compare_methods",
)


async def _node_boxes(url: str, port_file: Path) -> dict:
    """Every shipped workflow as the front end lays it out: [id, x, y, width, height, least width, least
    height] per node, the least size being LiteGraph's computeSize (what the node needs to draw)."""
    boxes = {}
    async with _comfy_page(url, port_file) as tools:
        for name in WORKFLOWS:
            workflow = (PACK_ROOT / "workflows" / f"{name}.json").read_text()
            await tools.evaluate(f"app.loadGraphData({workflow}).then(() => true)")
            await asyncio.sleep(1.0)
            boxes[name] = await tools.evaluate(
                "app.graph.nodes.map(n => [n.id, ...n.pos, ...n.size, ...n.computeSize()])"
            )
    return boxes


def test_shipped_workflows_draw_every_node_whole_and_apart(server):
    title = 30  # LiteGraph.NODE_TITLE_HEIGHT, drawn above pos
    for name, nodes in _in_browser(server, _node_boxes).items():
        for node_id, _, _, width, height, least_width, least_height in nodes:
            assert height >= least_height and width >= least_width, (name, node_id, height, least_height)
        for i, (a, ax, ay, aw, ah, *_) in enumerate(nodes):
            for b, bx, by, bw, bh, *_ in nodes[i + 1 :]:
                apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by - title or by + bh <= ay - title
                assert apart, f"{name}: nodes {a} {[ax, ay, aw, ah]} and {b} {[bx, by, bw, bh]} overlap"

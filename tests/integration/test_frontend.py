"""The front-end extension in a real browser: headless Chromium (Debian's package) opens ComfyUI's UI with
the pack loaded, loads workflow (a) and the Tile Planner node shows the plan, redrawn when a widget changes,
in both node renderers: the LiteGraph canvas and Nodes 2.0 (setting Comfy.VueNodes.Enabled, where nodes are
Vue components and onDrawForeground is never called).

Driven through the Chrome DevTools Protocol with aiohttp (ComfyUI's own dependency). The workflow then runs
from the browser (the embedded model, or the tiny test model before it is built) and Quality Metrics shows its
verdict and report on the node. The front end is the one ComfyUI serves: its pinned package, or the folder in
$COMFYUI_FRONTEND_ROOT (passed as --front-end-root, e.g. a newer comfyui-frontend-package's `static`). The
last screenshot on the canvas renderer is kept at $SANA_SCREENSHOT (e.g. docs/tile_planner.png) if set, and
both renderers' as nodes2_off.png / nodes2_on.png in $SANA_SCREENSHOT_DIR if set.
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
from sana_comfy import PACK_ROOT, ComfyServer

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


@pytest.fixture(scope="module")
def ui_server(request, models_dir, tmp_path_factory):
    """The server the browser talks to: the session's, or one serving $COMFYUI_FRONTEND_ROOT's front end."""
    root = os.environ.get("COMFYUI_FRONTEND_ROOT")
    if not root:
        yield request.getfixturevalue("server")
        return
    log = tmp_path_factory.mktemp("logs") / "comfyui_frontend.log"
    comfyui = Path(os.environ["COMFYUI_PATH"]).expanduser()
    comfy_server = ComfyServer(comfyui, models_dir, log, extra_args=("--front-end-root", root))
    yield comfy_server
    comfy_server.stop()


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
    """JS that sets widgets of ``node`` as the UI does (value, then the widget's callback) and redraws."""
    sets = "".join(
        f"w = n.widgets.find(w => w.name === {json.dumps(k)}); w.value = {json.dumps(v)}; "
        "w.callback?.(w.value);"
        for k, v in values.items()
    )
    redraw = "app.canvas.setDirty(true, true); app.canvas.draw(true, true);"
    return f"(() => {{ const n = {node}; let w; {sets} {redraw} return 1; }})()"


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


PLAN_PANEL = "[data-sana-panel='tile-plan']"
REPORT_PANEL = "[data-sana-panel='quality-report']"
REPORT_LINES = (
    f'[...document.querySelectorAll("{REPORT_PANEL} tr, {REPORT_PANEL} > div")].map(e => e.innerText)'
)
"""JS: the report panel's lines (table rows and text lines) as shown."""


def _rect(selector: str) -> str:
    """JS for the page rectangle [left, top, right, bottom] of the first element matching ``selector``."""
    return f"""(() => {{
      const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();
      return [r.left, r.top, r.right, r.bottom].map(Math.round);
    }})()"""


def _shown(selector: str) -> str:
    """JS: the element's centre is on screen and not covered (the topmost element there is inside it)."""
    return f"""(() => {{
      const e = document.querySelector({json.dumps(selector)}); const r = e.getBoundingClientRect();
      const x = (r.left + r.right) / 2, y = (r.top + r.bottom) / 2;
      return r.width > 0 && r.height > 0 && x < innerWidth && y < innerHeight &&
        e.contains(document.elementFromPoint(x, y));
    }})()"""


async def _use_renderer(tools: DevTools, nodes2: bool) -> None:
    """Nodes 2.0 on or off (a setting the server keeps for later pages), no minimap over the nodes, no
    first-visit templates browser."""
    settings = {
        "Comfy.VueNodes.Enabled": nodes2,
        "Comfy.Minimap.Visible": False,
        "Comfy.TutorialCompleted": True,
    }
    for name, value in settings.items():
        await tools.evaluate(
            f"app.extensionManager.setting.set({json.dumps(name)}, {json.dumps(value)}).then(() => 1)"
        )


async def _close_dialogs(tools: DevTools) -> None:
    """Close what a new user's first visit opens (the templates browser): Escape, and close buttons."""
    for kind in ("keyDown", "keyUp"):
        await tools.send(
            "Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape", windowsVirtualKeyCode=27
        )
    await tools.evaluate("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click()); 1")
    await asyncio.sleep(0.5)


def _frame(*nodes: str) -> str:
    """JS that zooms and pans the canvas so ``nodes`` fill the window (at most 1:1)."""
    return f"""(() => {{
      const nodes = [{", ".join(nodes)}]; const ds = app.canvas.ds;
      const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1])) - 40;
      const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
      const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
      ds.scale = Math.min(1, (innerWidth - 160) / (x1 - x0), (innerHeight - 100) / (y1 - y0));
      ds.offset = [80 / ds.scale - x0, 50 / ds.scale - y0];
      app.canvas.setDirty(true, true); app.canvas.draw(true, true); return 1;
    }})()"""


async def _session(url: str, port_file: Path, nodes2: bool) -> dict:
    """With Nodes 2.0 on or off: load workflow (a), screenshot the planner as loaded, after a widget
    change, with an impossible plan, then run the workflow from the browser and screenshot the planner and
    the metrics node."""
    async with _comfy_page(url, port_file) as tools:
        shots = {"version": await tools.evaluate("window.__COMFYUI_FRONTEND_VERSION__ ?? null")}
        await _use_renderer(tools, nodes2)
        try:
            workflow = (PACK_ROOT / "workflows" / "txt2img_temporal_tiling.json").read_text()
            await tools.evaluate(f"app.loadGraphData({workflow}).then(() => true)")
            await asyncio.sleep(1.5)
            await _close_dialogs(tools)
            shots["vue_nodes"] = await tools.evaluate("document.querySelectorAll('[data-node-id]').length")
            shots["panels"] = await tools.evaluate("document.querySelectorAll('[data-sana-panel]').length")
            if nodes2 and not (shots["vue_nodes"] and shots["panels"]):
                return shots
            await tools.evaluate(_frame(PLANNER))
            await asyncio.sleep(1.5)
            shots["box"] = tuple(await tools.evaluate(_rect(PLAN_PANEL)))
            shots["before"] = await tools.screenshot()
            await tools.evaluate(_set_widgets(PLANNER, {"tile_width": 256, "overlap": 64}))
            await asyncio.sleep(1.0)
            shots["after"] = await tools.screenshot()
            await tools.evaluate(_set_widgets(PLANNER, {"overlap": 512}))
            await asyncio.sleep(1.0)
            shots["invalid"] = await tools.screenshot()
            # shuffle_seed only orders random plans; a value per renderer keeps a server that already ran the
            # workflow from answering from its cache (cached nodes send the browser no results)
            await tools.evaluate(
                _set_widgets(PLANNER, {"tile_width": 128, "overlap": 32, "shuffle_seed": int(nodes2)})
            )
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
            await tools.evaluate(_frame(PLANNER, METRICS))
            await asyncio.sleep(1.5)
            shots["ran"] = await tools.screenshot()
            shots["ran_box"] = tuple(await tools.evaluate(_rect(PLAN_PANEL)))
            shots["verdict_shown"] = await tools.evaluate(_shown(f"{REPORT_PANEL} [data-verdict]"))
            shots["panel_lines"] = await tools.evaluate(REPORT_LINES)
            shots["report"] = await tools.evaluate(f"{METRICS}.sanaReport")
            shots["errors"] = tools.errors
            return shots
        finally:  # the server keeps the setting: later pages start on the canvas renderer, as by default
            await _use_renderer(tools, nodes2=False)


@pytest.mark.parametrize("nodes2", [False, True], ids=["canvas_nodes", "nodes2"])
def test_tile_planner_draws_the_plan_live_and_metrics_show_on_the_node(ui_server, nodes2):
    shots = _in_browser(ui_server, lambda url, port_file: _session(url, port_file, nodes2))
    if nodes2 and not shots["vue_nodes"]:
        pytest.skip(f"front end {shots['version']} renders no Nodes 2.0 (Comfy.VueNodes.Enabled)")
    version = tuple(int(part) for part in (shots["version"] or "0.0").split(".")[:2])
    if nodes2 and not shots["panels"] and version < (1, 28):
        # seen on 1.27.10 (ComfyUI 0.3.64's pinned front end): its experimental Vue nodes have no DOM widgets
        pytest.skip(f"front end {shots['version']}'s experimental Nodes 2.0 renders no DOM widgets")
    assert shots["panels"], f"front end {shots['version']} shows neither the plan nor the report panel"
    out = os.environ.get("SANA_SCREENSHOT")
    if out and not nodes2:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shots["ran"].save(out)
    folder = os.environ.get("SANA_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shots["ran"].save(Path(folder) / f"nodes2_{'on' if nodes2 else 'off'}.png")
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
    assert _colourful(shots["ran"], shots["ran_box"]) > 500, "the plan vanished after the run"
    assert shots["verdict_shown"], "the verdict is not visible on the Quality Metrics node"
    verdict, *rows = shots["panel_lines"]
    assert verdict.startswith(("seamless", "seams visible")), verdict
    report = [line for line in shots["report"] if line.strip() and not line.startswith("| ---")]
    assert len(shots["panel_lines"]) == len(report), "the node does not show every line of the report"
    assert any(row.startswith("gradient ratio") for row in rows), rows


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
        await _use_renderer(tools, nodes2=False)
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

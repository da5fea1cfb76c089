// Front-end extension of the SANA temporal tiling pack.
// - Tile Planner: draws the tile plan (grid, overlaps, generation order) on the node, recomputed in the
//   browser from the widgets whenever they change, so it follows the widgets live. The geometry mirrors
//   temporal_tiling/plan.py (make_plan); what only the server knows (canvas size from a connected
//   image/latent, the VAE's compression, an auto tile size, a random order) comes from the last run.
// - Quality Metrics: shows the verdict and the whole report of the last run on the node.
// Both live in DOM widgets (addDOMWidget), which the front end shows in both node renderers: on the
// LiteGraph canvas and in Nodes 2.0 (Comfy.VueNodes.Enabled), where onDrawForeground is never called.
import { app } from "../../scripts/app.js";

const PREVIEW_HEIGHT = 200;
const REPORT_HEIGHT = 260;
const MARGIN = 8;
const PANEL_CSS = "width: 100%; height: 100%; box-sizing: border-box;";

function widgetValue(node, name) {
  const widget = node.widgets?.find((w) => w.name === name);
  return widget ? widget.value : undefined;
}

function isLinked(node, name) {
  const input = node.inputs?.find((i) => i.name === name);
  return input != null && input.link != null;
}

// Tile origins along one axis: fixed stride, the last tile shifted inward to end on the edge.
function axisStarts(canvas, tile, overlap) {
  if (tile >= canvas) return [0];
  const stride = tile - overlap;
  const count = Math.ceil((canvas - tile) / stride) + 1;
  return Array.from({ length: count }, (_, i) => Math.min(i * stride, canvas - tile));
}

// fit = grow: the overlap-free tile count, every tile grown just enough for the overlap (plan.py FITS).
function fittedTile(canvas, tile, overlap) {
  const count = Math.ceil(canvas / tile);
  if (count === 1) return tile;
  return Math.min(canvas, Math.ceil((canvas + (count - 1) * overlap) / count));
}

function spiral(rows, cols) {
  let top = 0, bottom = rows - 1, left = 0, right = cols - 1;
  const out = [];
  while (top <= bottom && left <= right) {
    for (let c = left; c <= right; c++) out.push([top, c]);
    for (let r = top + 1; r <= bottom; r++) out.push([r, right]);
    if (top < bottom) for (let c = right - 1; c >= left; c--) out.push([bottom, c]);
    if (left < right) for (let r = bottom - 1; r > top; r--) out.push([r, left]);
    top++; bottom--; left++; right--;
  }
  return out;
}

// Grid cells in generation order; null for random (numpy's generator lives on the server).
function gridOrder(rows, cols, order) {
  const cells = [];
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) cells.push([r, c]);
  if (order === "raster") return cells;
  if (order === "serpentine") return cells.map(([r, c]) => [r, r % 2 === 0 ? c : cols - 1 - c]);
  if (order === "spiral") return spiral(rows, cols);
  if (order === "center_out") {
    const cy = (rows - 1) / 2, cx = (cols - 1) / 2;
    const key = ([r, c]) => (r - cy) ** 2 + (c - cx) ** 2;
    return cells.sort((a, b) => key(a) - key(b) || a[0] - b[0] || a[1] - b[1]);
  }
  return null;
}

function multipleError(name, value, c) {
  if (value % c === 0) return null;
  const lower = Math.max(c, Math.floor(value / c) * c);
  return `${name} ${value} px is not a multiple of ${c}; use ${lower} or ${lower + c}`;
}

// The plan as {width, height, tiles: [[x, y, w, h] in generation order], ordered} or {error}.
export function planFromWidgets(v) {
  const c = v.compression;
  for (const [name, value] of [["width", v.width], ["height", v.height], ["tile_width", v.tileWidth],
                               ["tile_height", v.tileHeight], ["overlap", v.overlap]]) {
    const error = name === "overlap" && value === 0 ? null : multipleError(name, value, c);
    if (error) return { error };
  }
  if (v.tileWidth > v.width || v.tileHeight > v.height) {
    return { error: `tile ${v.tileWidth}×${v.tileHeight} is larger than the canvas ${v.width}×${v.height}` };
  }
  if (v.overlap >= Math.min(v.tileWidth, v.tileHeight)) {
    return { error: `overlap ${v.overlap} px must be smaller than the tile` };
  }
  const grow = v.fit === "grow";
  const th = grow ? fittedTile(v.height / c, v.tileHeight / c, v.overlap / c) : v.tileHeight / c;
  const tw = grow ? fittedTile(v.width / c, v.tileWidth / c, v.overlap / c) : v.tileWidth / c;
  const ys = axisStarts(v.height / c, th, v.overlap / c);
  const xs = axisStarts(v.width / c, tw, v.overlap / c);
  const sequence = gridOrder(ys.length, xs.length, v.order) ??
    gridOrder(ys.length, xs.length, "raster");
  const tiles = sequence.map(([r, col]) => [xs[col] * c, ys[r] * c, tw * c, th * c]);
  return { width: v.width, height: v.height, tiles, ordered: v.order !== "random" };
}

function sameRects(a, b) {
  const key = (tiles) => tiles.map((t) => t.join(",")).sort().join(";");
  return a.length === b.length && key(a) === key(b);
}

// The plan to draw: live from the widgets; what only the server knows (canvas size from a connected
// image/latent, the VAE's compression, an auto tile size, numpy's random order) comes from the last run.
function plannerPlan(node) {
  const ran = node.sanaExecutedPlan;
  const auto = widgetValue(node, "tile_size") === "auto";
  const sizeFromInput = isLinked(node, "image") || isLinked(node, "latent");
  const vae = isLinked(node, "vae");
  if (auto) {
    return ran ? { width: ran.canvas[0], height: ran.canvas[1], tiles: ran.tiles, ordered: true, note: ran.summary }
      : { error: "auto tile size: the server picks it from free memory; run once to see the plan" };
  }
  const v = {
    width: widgetValue(node, "width"), height: widgetValue(node, "height"),
    tileWidth: widgetValue(node, "tile_width"), tileHeight: widgetValue(node, "tile_height"),
    overlap: widgetValue(node, "overlap"), order: widgetValue(node, "order"), fit: widgetValue(node, "fit"),
    compression: vae && ran ? ran.compression : widgetValue(node, "compression"),
  };
  if (sizeFromInput && ran) [v.width, v.height] = ran.canvas;
  const plan = planFromWidgets(v);
  if (plan.error) return plan;
  if (v.order === "random" && ran && sameRects(ran.tiles, plan.tiles)) {
    plan.tiles = ran.tiles;
    plan.ordered = true;
  }
  if (sizeFromInput && !ran) plan.note = "canvas size comes from the connected input: run once to see it";
  else if (vae && !ran) plan.note = `${summaryLine(plan)} · compression: the VAE's (checked at run)`;
  return plan;
}

function summaryLine(plan) {
  const rows = new Set(plan.tiles.map((t) => t[1])).size, cols = new Set(plan.tiles.map((t) => t[0])).size;
  return `${cols}×${rows} tiles · ${plan.width}×${plan.height} px`;
}

// The plan drawn into the panel's <canvas>, sized to the panel (the front end lays the panel out).
function drawPlan(canvas, plan) {
  const ratio = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth, cssH = canvas.clientHeight;
  if (!cssW || !cssH) return;
  canvas.width = Math.round(cssW * ratio);
  canvas.height = Math.round(cssH * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  ctx.font = "12px sans-serif";
  const areaW = cssW - 2 * MARGIN, areaH = cssH - 22;
  if (plan.error) {
    ctx.fillStyle = "#f4a09a";
    ctx.fillText(`⚠ ${plan.error}`, MARGIN, 14, areaW);
    return;
  }
  const scale = Math.min(areaW / plan.width, areaH / plan.height);
  const ox = MARGIN + (areaW - plan.width * scale) / 2, oy = 0;
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(ox, oy, plan.width * scale, plan.height * scale);
  // Overlaps: every tile adds a translucent layer, so cells covered twice or more come out brighter.
  ctx.fillStyle = "rgba(255, 255, 255, 0.12)";
  for (const [x, y, w, h] of plan.tiles) ctx.fillRect(ox + x * scale, oy + y * scale, w * scale, h * scale);
  const count = plan.tiles.length;
  plan.tiles.forEach(([x, y, w, h], i) => {
    const color = `hsl(${Math.round((360 * i) / Math.max(1, count))}, 85%, 60%)`;
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.strokeRect(ox + x * scale + 1, oy + y * scale + 1, w * scale - 2, h * scale - 2);
    ctx.fillStyle = color;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(plan.ordered ? String(i + 1) : "?", ox + (x + w / 2) * scale, oy + (y + h / 2) * scale);
  });
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillStyle = "#bbb";
  ctx.fillText(plan.note ?? summaryLine(plan), MARGIN, cssH - 4, areaW);
}

function cells(row) {
  return row.split("|").slice(1, -1).map((cell) => cell.trim());
}

function tableElement(rows) {
  const table = document.createElement("table");
  table.style.cssText = "border-collapse: collapse; margin: 2px 0 6px; width: 100%;";
  rows.forEach((row, i) => {
    const tr = table.insertRow();
    for (const text of cells(row)) {
      const cell = document.createElement(i === 0 ? "th" : "td");
      cell.textContent = text;
      cell.style.cssText = "border-bottom: 1px solid #444; padding: 1px 6px 1px 0; vertical-align: top; " +
        `text-align: left; ${i === 0 ? "color: #999; font-weight: normal;" : ""}`;
      tr.appendChild(cell);
    }
  });
  return table;
}

// The report (markdown from the node: verdict, tables, notes, the saved path) as HTML: the verdict first,
// coloured, then every table and line, wrapped to the panel's width and scrollable.
function showReport(panel, text) {
  panel.replaceChildren();
  if (!text) {
    panel.textContent = "Run the workflow to see the verdict and the seam measures here.";
    return;
  }
  const lines = text.split("\n");
  let table = [];
  const flush = () => {
    if (table.length) panel.appendChild(tableElement(table.filter((row) => !row.startsWith("| ---"))));
    table = [];
  };
  lines.forEach((line, i) => {
    if (line.startsWith("|")) return table.push(line);
    flush();
    if (!line.trim()) return;
    const block = document.createElement("div");
    block.textContent = line;
    block.style.margin = "2px 0";
    if (i === 0) {
      block.dataset.verdict = line.startsWith("seamless") ? "seamless" : "seams";
      block.style.cssText += "font-weight: bold; font-size: 13px; " +
        `color: ${line.startsWith("seamless") ? "#8fdc8f" : "#f5b971"};`;
    }
    panel.appendChild(block);
  });
  flush();
}

// A panel below the widgets that the front end lays out and shows in both node renderers; it is not a
// value (not saved in the workflow, not sent with the prompt).
function addPanel(node, name, element, height) {
  element.style.cssText += PANEL_CSS;
  const widget = node.addDOMWidget(name, "sana_panel", element, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => height,
    getHeight: () => height,
  });
  widget.serialize = false;
  widget.serializeValue = () => undefined;
  return widget;
}

// Redraws the Tile Planner's panel when the plan (or the panel's size) changed since the last drawing.
function refreshPlan(node) {
  const canvas = node.sanaPlanCanvas;
  if (!canvas) return;
  const plan = plannerPlan(node);
  const key = JSON.stringify([plan, canvas.clientWidth, canvas.clientHeight]);
  if (key === node.sanaPlanKey) return;
  node.sanaPlanKey = key;
  drawPlan(canvas, plan);
}

function chain(prototype, name, after) {
  const before = prototype[name];
  prototype[name] = function () {
    const result = before?.apply(this, arguments);
    after.apply(this, arguments);
    return result;
  };
}

function setUpPlanner(nodeType) {
  chain(nodeType.prototype, "onNodeCreated", function () {
    const canvas = document.createElement("canvas");
    canvas.dataset.sanaPanel = "tile-plan";
    // Nodes 2.0 sizes the panel by its content: the canvas asks for the height the plan needs.
    canvas.style.cssText = `display: block; min-height: ${PREVIEW_HEIGHT - 2 * MARGIN}px;`;
    this.sanaPlanCanvas = canvas;
    addPanel(this, "sana_tile_plan", canvas, PREVIEW_HEIGHT);
    this.sanaPlanObserver = new ResizeObserver(() => refreshPlan(this));
    this.sanaPlanObserver.observe(canvas);
    for (const widget of this.widgets ?? []) {
      const callback = widget.callback;
      widget.callback = (...args) => {
        const result = callback?.apply(widget, args);
        refreshPlan(this);
        return result;
      };
    }
  });
  chain(nodeType.prototype, "onRemoved", function () {
    this.sanaPlanObserver?.disconnect();
  });
  // Every path by which the plan's inputs change: widgets (canvas or Nodes 2.0), a loaded workflow, links,
  // a run; on the LiteGraph canvas also every redraw (widget values set by code).
  for (const hook of ["onWidgetChanged", "onConfigure", "onConnectionsChange", "onDrawForeground"]) {
    chain(nodeType.prototype, hook, function () {
      refreshPlan(this);
    });
  }
  chain(nodeType.prototype, "onExecuted", function (message) {
    this.sanaExecutedPlan = message?.sana_tile_plan?.[0];
    refreshPlan(this);
  });
}

function setUpMetrics(nodeType) {
  chain(nodeType.prototype, "onNodeCreated", function () {
    const panel = document.createElement("div");
    panel.dataset.sanaPanel = "quality-report";
    // at most the panel's height in both renderers (Nodes 2.0 sizes it by its content); the rest scrolls
    panel.style.cssText = "overflow: auto; font: 11px/1.35 sans-serif; color: #ddd; padding: 2px 6px; " +
      `user-select: text; max-height: ${REPORT_HEIGHT}px;`;
    this.sanaReportPanel = panel;
    addPanel(this, "sana_quality_report", panel, REPORT_HEIGHT);
    showReport(panel, null);
  });
  chain(nodeType.prototype, "onExecuted", function (message) {
    const text = message?.text?.[0] ?? null;
    this.sanaReport = text ? text.split("\n") : null;
    showReport(this.sanaReportPanel, text);
  });
}

app.registerExtension({
  name: "sana.temporal_tiling.tile_plan_preview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === "SanaTemporalTilePlanner") setUpPlanner(nodeType);
    if (nodeData.name === "SanaTemporalTileMetrics") setUpMetrics(nodeType);
  },
});

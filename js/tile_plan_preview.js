// Front-end extension of the SANA temporal tiling pack.
// - Tile Planner: draws the tile plan (grid, overlaps, generation order) on the node, recomputed in the
//   browser from the widgets on every redraw, so it follows the widgets live. The geometry mirrors
//   temporal_tiling/plan.py (make_plan); what only the server knows (canvas size from a connected
//   image/latent, the VAE's compression, an auto tile size, a random order) comes from the last run.
// - Quality Metrics: shows the numbers of the last run on the node.
import { app } from "../../scripts/app.js";

const PREVIEW_HEIGHT = 200;
const REPORT_HEIGHT = 120;
const MARGIN = 8;

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

function drawPlan(ctx, node, plan) {
  const top = node.size[1] - PREVIEW_HEIGHT - MARGIN;
  const areaW = node.size[0] - 2 * MARGIN, areaH = PREVIEW_HEIGHT - 22;
  ctx.save();
  ctx.font = "12px sans-serif";
  if (plan.error) {
    ctx.fillStyle = "#f4a09a";
    ctx.fillText(`⚠ ${plan.error}`, MARGIN, top + 14, areaW);
    ctx.restore();
    return;
  }
  const scale = Math.min(areaW / plan.width, areaH / plan.height);
  const ox = MARGIN + (areaW - plan.width * scale) / 2, oy = top;
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
  ctx.fillText(plan.note ?? summaryLine(plan), MARGIN, top + PREVIEW_HEIGHT - 4, areaW);
  ctx.restore();
}

function drawReport(ctx, node) {
  const lines = node.sanaReport;
  if (!lines?.length) return;
  const top = node.size[1] - REPORT_HEIGHT - MARGIN;
  ctx.save();
  ctx.font = "12px monospace";
  ctx.fillStyle = "#ddd";
  lines.slice(0, 8).forEach((text, i) => ctx.fillText(text, MARGIN, top + 14 * (i + 1), node.size[0] - 2 * MARGIN));
  ctx.restore();
}

// Markdown table rows → "metric: value" lines; the closing sentence as is.
function reportLines(text) {
  return text.split("\n").filter((l) => l.trim() && !l.startsWith("| ---") && !l.startsWith("| metric"))
    .map((l) => {
      if (!l.startsWith("|")) return l;
      const cells = l.split("|").map((s) => s.trim()).filter(Boolean);
      return `${cells[0]}: ${cells[1]}${cells[3] ? `  (${cells[3]})` : ""}`;
    });
}

function reserveSpace(nodeType, extra, draw) {
  const computeSize = nodeType.prototype.computeSize;
  nodeType.prototype.computeSize = function (out) {
    const size = computeSize.apply(this, arguments);
    size[1] += extra + MARGIN;
    return size;
  };
  const onDrawForeground = nodeType.prototype.onDrawForeground;
  nodeType.prototype.onDrawForeground = function (ctx) {
    onDrawForeground?.apply(this, arguments);
    if (!this.flags?.collapsed) draw(ctx, this);
  };
}

app.registerExtension({
  name: "sana.temporal_tiling.tile_plan_preview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === "SanaTemporalTilePlanner") {
      reserveSpace(nodeType, PREVIEW_HEIGHT, (ctx, node) => drawPlan(ctx, node, plannerPlan(node)));
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        this.sanaExecutedPlan = message?.sana_tile_plan?.[0];
        this.setDirtyCanvas(true, true);
      };
    }
    if (nodeData.name === "SanaTemporalTileMetrics") {
      reserveSpace(nodeType, REPORT_HEIGHT, drawReport);
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        this.sanaReport = message?.text?.[0] ? reportLines(message.text[0]) : null;
        this.setDirtyCanvas(true, true);
      };
    }
  },
});

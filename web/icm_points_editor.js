// In-Context Matting: a points editor inside Expand Point Prompt (plain ES module, no build step, nothing fetched
// from the network).
//
// The node's canvas shows the reference image: left click adds a positive point (green), right click or
// shift+click a negative one (red), dragging moves a point, ctrl+click on a point removes it, "Clear points"
// removes all. The points live in the node's own positive_points / negative_points widgets as JSON
// [{"x": .., "y": ..}] in the reference's pixel coordinates (integers: the pixel clicked), so saved workflows,
// undo and API prompts carry them; the editor only reads and writes those widgets and keeps no state of its own.
// After a run the cells the expansion chose are drawn over the image (dimmed once the points have changed).
//
// The image shown: the upstream Load Image's file when the reference comes straight from one, otherwise the
// reference as the node saw it in its last run (the node returns it as a temporary preview).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPE = "ICM_ExpandPointPrompt";
const WIDGET_NAME = "points_editor";
const REFERENCE_KEY = "icm_points_reference";
const CELLS_KEY = "icm_points_cells";
const KINDS = ["positive", "negative"];
const COLOURS = { positive: "#1ed74a", negative: "#ff2d2d" };
const POINT_RADIUS = 6; // layout px (scales with the canvas zoom like the rest of the node)
const HIT_RADIUS = 11;
const MIN_HEIGHT = 220;
const HINT = "click: + \u00b7 right/shift-click: \u2212 \u00b7 drag: move \u00b7 ctrl-click: remove";

/** Parse a points widget's text: {points: [{x, y}], error: null} or {points: [], error: "..."}. */
export function parsePoints(text) {
  if (text == null || !String(text).trim()) return { points: [], error: null };
  let data;
  try {
    data = JSON.parse(text);
  } catch (error) {
    return { points: [], error: `not valid JSON (${error.message})` };
  }
  if (data && !Array.isArray(data) && typeof data === "object") data = [data];
  if (!Array.isArray(data)) return { points: [], error: "expected a JSON list of {\"x\": .., \"y\": ..}" };
  const points = [];
  for (const [index, item] of data.entries()) {
    const ok = item && typeof item === "object" && Number.isFinite(item.x) && Number.isFinite(item.y);
    if (!ok) return { points: [], error: `item ${index} has no numeric "x" and "y"` };
    points.push({ x: item.x, y: item.y });
  }
  return { points, error: null };
}

function viewUrl(filename, type, subfolder) {
  const query = new URLSearchParams({ filename, type, subfolder: subfolder ?? "" });
  return api.apiURL(`/view?${query}`);
}

/** The /view URL of a Load Image widget value such as "sub/name.png [input]". */
function loadImageUrl(value) {
  if (typeof value !== "string" || !value) return null;
  let type = "input";
  let path = value;
  const annotated = /^(.*) \[(input|output|temp)\]$/.exec(value);
  if (annotated) [, path, type] = annotated;
  const slash = path.lastIndexOf("/");
  return viewUrl(path.slice(slash + 1), type, slash >= 0 ? path.slice(0, slash) : "");
}

/** One undo step per edit (a whole drag is one edit); the editor swallows the mouse events ComfyUI records on. */
function recordUndoState() {
  app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
}

function samePoints(a, b) {
  return a.length === b.length && a.every((p, i) => p.x === b[i].x && p.y === b[i].y);
}

class PointsEditor {
  constructor(node) {
    this.node = node;
    this.image = null; // HTMLImageElement once loaded
    this.imageUrl = null;
    this.runImageUrl = null; // the reference of the last run
    this.cells = null; // the last run's expansion (see nodes/points_editor.py)
    this.drag = null;
    this.drawnKey = "";
    this.cellsVersion = 0;
    this.element = document.createElement("div");
    Object.assign(this.element.style, { display: "flex", flexDirection: "column", gap: "4px",
      boxSizing: "border-box" });
    const bar = document.createElement("div");
    Object.assign(bar.style, { display: "flex", alignItems: "center", gap: "6px", font: "11px sans-serif",
      color: "#bbb", flex: "0 0 auto", whiteSpace: "nowrap", overflow: "hidden" });
    this.clearButton = document.createElement("button");
    this.clearButton.textContent = "Clear points";
    this.clearButton.className = "icm-points-clear";
    Object.assign(this.clearButton.style, { font: "11px sans-serif", padding: "1px 6px", cursor: "pointer" });
    this.status = document.createElement("span");
    this.status.className = "icm-points-status";
    this.status.textContent = HINT;
    bar.append(this.clearButton, this.status);
    this.canvas = document.createElement("canvas");
    this.canvas.className = "icm-points-canvas";
    Object.assign(this.canvas.style, { flex: "1 1 auto", width: "100%", minHeight: "0", cursor: "crosshair",
      touchAction: "none", background: "#1b1b1b", borderRadius: "4px" });
    this.element.append(bar, this.canvas);

    this.clearButton.addEventListener("pointerdown", (e) => e.stopPropagation());
    this.clearButton.addEventListener("click", (e) => {
      e.stopPropagation();
      this.writeAll({ positive: [], negative: [] });
    });
    this.canvas.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onPointerUp(e));
    this.canvas.addEventListener("pointercancel", (e) => this.onPointerUp(e));
    this.canvas.addEventListener("contextmenu", (e) => { e.preventDefault(); e.stopPropagation(); });
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  // ------------------------------------------------------------------ the widgets (the only state)
  widget(kind) {
    return this.node.widgets?.find((w) => w.name === `${kind}_points`);
  }

  read(kind) {
    return parsePoints(this.widget(kind)?.value);
  }

  readAll() {
    const positive = this.read("positive");
    const negative = this.read("negative");
    const error = positive.error ? `positive_points: ${positive.error}` :
      negative.error ? `negative_points: ${negative.error}` : null;
    return { positive: positive.points, negative: negative.points, error };
  }

  writeAll(points) {
    for (const kind of KINDS) {
      const widget = this.widget(kind);
      if (!widget) continue;
      const text = JSON.stringify(points[kind].map((p) => ({ x: p.x, y: p.y })));
      if (widget.value === text) continue;
      widget.value = text;
      widget.callback?.(widget.value, app.canvas, this.node);
    }
    this.node.setDirtyCanvas?.(true, true);
    this.draw();
    if (!this.drag) recordUndoState();
  }

  // ------------------------------------------------------------------ the image
  referenceSource() {
    const slot = this.node.inputs?.findIndex((input) => input.name === "reference") ?? -1;
    const upstream = slot >= 0 ? this.node.getInputNode(slot) : null;
    const file = upstream?.widgets?.find((w) => w.name === "image");
    if (upstream && /^LoadImage/.test(upstream.comfyClass ?? upstream.type ?? "") && file) {
      return loadImageUrl(file.value);
    }
    return this.runImageUrl ?? upstream?.imgs?.[0]?.src ?? null;
  }

  refreshImage() {
    const url = this.referenceSource();
    if (url === this.imageUrl) return;
    this.imageUrl = url;
    this.image = null;
    if (!url) return;
    const image = new Image();
    image.onload = () => {
      if (this.imageUrl !== url) return;
      this.image = image;
      this.draw();
    };
    image.onerror = () => {
      if (this.imageUrl === url) this.setStatus(`could not load the reference image (${url})`);
    };
    image.src = url;
  }

  setRun(output) {
    const saved = output?.[REFERENCE_KEY]?.[0];
    if (saved) this.runImageUrl = viewUrl(saved.filename, saved.type, saved.subfolder);
    this.cells = output?.[CELLS_KEY]?.[0] ?? null;
    this.cellsVersion += 1;
    this.refreshImage();
    this.draw();
  }

  // ------------------------------------------------------------------ geometry (layout px <-> image px)
  /** Where the image lies in the canvas, in layout px: image pixel (x, y) -> (ox + x * s, oy + y * s). */
  fit() {
    const width = this.canvas.clientWidth;
    const height = this.canvas.clientHeight;
    if (!this.image || !width || !height) return null;
    const w = this.image.naturalWidth;
    const h = this.image.naturalHeight;
    const s = Math.min(width / w, height / h);
    return { s, ox: (width - w * s) / 2, oy: (height - h * s) / 2, w, h, width, height };
  }

  /** A pointer event -> layout px inside the canvas (the canvas may be scaled by the graph's zoom). */
  layoutPoint(event) {
    const rect = this.canvas.getBoundingClientRect();
    return {
      lx: ((event.clientX - rect.left) * this.canvas.clientWidth) / rect.width,
      ly: ((event.clientY - rect.top) * this.canvas.clientHeight) / rect.height,
    };
  }

  /** Screen (client) position of the centre of image pixel (x, y); null without an image. */
  screenPosition(x, y) {
    const fit = this.fit();
    if (!fit) return null;
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: rect.left + ((fit.ox + (x + 0.5) * fit.s) * rect.width) / this.canvas.clientWidth,
      y: rect.top + ((fit.oy + (y + 0.5) * fit.s) * rect.height) / this.canvas.clientHeight,
    };
  }

  hit(points, lx, ly, fit) {
    let best = null;
    for (const kind of KINDS) {
      points[kind].forEach((p, index) => {
        const d = Math.hypot(fit.ox + (p.x + 0.5) * fit.s - lx, fit.oy + (p.y + 0.5) * fit.s - ly);
        if (d <= HIT_RADIUS && (!best || d < best.d)) best = { kind, index, d };
      });
    }
    return best;
  }

  // ------------------------------------------------------------------ mouse
  onPointerDown(event) {
    event.preventDefault();
    event.stopPropagation();
    const fit = this.fit();
    if (!fit) return;
    const points = this.readAll();
    if (points.error) {
      this.setStatus(`${points.error}: fix or clear the text to edit points here`);
      return;
    }
    const { lx, ly } = this.layoutPoint(event);
    const hit = this.hit(points, lx, ly, fit);
    if (event.ctrlKey || event.metaKey) {
      if (hit) {
        points[hit.kind].splice(hit.index, 1);
        this.writeAll(points);
      }
      return;
    }
    if (event.button === 0 && hit) {
      this.drag = { kind: hit.kind, index: hit.index, pointer: event.pointerId };
      this.canvas.setPointerCapture(event.pointerId);
      return;
    }
    if (hit || (event.button !== 0 && event.button !== 2)) return;
    const x = Math.floor((lx - fit.ox) / fit.s);
    const y = Math.floor((ly - fit.oy) / fit.s);
    if (x < 0 || y < 0 || x >= fit.w || y >= fit.h) return;
    points[event.button === 2 || event.shiftKey ? "negative" : "positive"].push({ x, y });
    this.writeAll(points);
  }

  onPointerMove(event) {
    if (!this.drag || event.pointerId !== this.drag.pointer) return;
    event.preventDefault();
    event.stopPropagation();
    const fit = this.fit();
    const points = this.readAll();
    const point = points[this.drag.kind]?.[this.drag.index];
    if (!fit || points.error || !point) return;
    const { lx, ly } = this.layoutPoint(event);
    point.x = Math.min(fit.w - 1, Math.max(0, Math.floor((lx - fit.ox) / fit.s)));
    point.y = Math.min(fit.h - 1, Math.max(0, Math.floor((ly - fit.oy) / fit.s)));
    this.writeAll(points);
  }

  onPointerUp(event) {
    if (!this.drag || event.pointerId !== this.drag.pointer) return;
    this.drag = null;
    if (this.canvas.hasPointerCapture(event.pointerId)) this.canvas.releasePointerCapture(event.pointerId);
    recordUndoState();
  }

  // ------------------------------------------------------------------ drawing
  setStatus(text) {
    if (this.status.textContent !== text) this.status.textContent = text;
  }

  /** Called on every frame the node is drawn: redraw only when something shown has changed. */
  onFrame() {
    this.refreshImage();
    if (this.frameKey() !== this.drawnKey) this.draw();
  }

  /** Everything the drawing depends on. */
  frameKey() {
    const rect = this.canvas.getBoundingClientRect();
    return [this.widget("positive")?.value, this.widget("negative")?.value, this.imageUrl, !!this.image,
      this.canvas.clientWidth, this.canvas.clientHeight, rect.width.toFixed(1), rect.height.toFixed(1),
      this.cells ? this.cells.cells.length : -1, this.cellsVersion].join("|");
  }

  draw() {
    const canvas = this.canvas;
    const rect = canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const backingWidth = Math.max(1, Math.round(rect.width * ratio));
    const backingHeight = Math.max(1, Math.round(rect.height * ratio));
    if (canvas.width !== backingWidth) canvas.width = backingWidth;
    if (canvas.height !== backingHeight) canvas.height = backingHeight;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    this.drawnKey = "";
    const fit = this.fit();
    if (!fit) {
      this.setStatus(this.imageUrl ? "loading the reference\u2026" :
        "connect a reference (Load Image), or queue once to show it here");
      return;
    }
    ctx.setTransform(canvas.width / fit.width, 0, 0, canvas.height / fit.height, 0, 0);
    ctx.imageSmoothingEnabled = fit.s < 1;
    ctx.drawImage(this.image, fit.ox, fit.oy, fit.w * fit.s, fit.h * fit.s);
    const points = this.readAll();
    const stale = this.drawCells(ctx, fit, points);
    this.drawPoints(ctx, fit, points);
    this.setStatus(points.error ? `${points.error}: fix or clear the text to edit points here` :
      stale ? "cells from the last run (points changed since: queue to update)" : HINT);
    this.drawnKey = this.frameKey();
  }

  /** The last run's cells over the image; returns whether they are stale (points changed since). */
  drawCells(ctx, fit, points) {
    const cells = this.cells;
    if (!cells || cells.width !== fit.w || cells.height !== fit.h) return false;
    const stale = !samePoints(cells.positive, points.positive) || !samePoints(cells.negative, points.negative);
    const box = ([row, col]) => {
      const ys = cells.rows[row];
      const xs = cells.cols[col];
      return ys && xs ? [fit.ox + xs[0] * fit.s, fit.oy + ys[0] * fit.s, (xs[1] - xs[0]) * fit.s,
        (ys[1] - ys[0]) * fit.s] : null;
    };
    ctx.save();
    ctx.globalAlpha = stale ? 0.18 : 0.4;
    ctx.fillStyle = "#30e070";
    for (const cell of cells.cells) {
      const b = box(cell);
      if (b) ctx.fillRect(...b);
    }
    ctx.globalAlpha = stale ? 0.3 : 0.9;
    ctx.strokeStyle = "#ffdd33";
    ctx.lineWidth = 1;
    for (const cell of cells.prompt_cells) {
      const b = box(cell);
      if (b) ctx.strokeRect(b[0] + 0.5, b[1] + 0.5, b[2] - 1, b[3] - 1);
    }
    ctx.restore();
    return stale;
  }

  drawPoints(ctx, fit, points) {
    for (const kind of KINDS) {
      for (const p of points[kind]) {
        const cx = fit.ox + (p.x + 0.5) * fit.s;
        const cy = fit.oy + (p.y + 0.5) * fit.s;
        ctx.beginPath();
        ctx.arc(cx, cy, POINT_RADIUS, 0, 2 * Math.PI);
        ctx.fillStyle = COLOURS[kind];
        ctx.fill();
        ctx.lineWidth = 1.5;
        ctx.strokeStyle = "#000";
        ctx.stroke();
      }
    }
  }

  /** Where each point is drawn on screen (client px), for tests and tools: {positive: [{x, y}], negative: [...]}. */
  drawnPositions() {
    const points = this.readAll();
    const out = {};
    for (const kind of KINDS) out[kind] = points[kind].map((p) => this.screenPosition(p.x, p.y));
    return out;
  }
}

app.registerExtension({
  name: "InContextMatting.PointsEditor",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const editor = new PointsEditor(this);
      const widget = this.addDOMWidget(WIDGET_NAME, "icm_points_editor", editor.element, {
        serialize: false, // the points are in positive_points / negative_points; nothing of the editor is saved
        hideOnZoom: false,
        getMinHeight: () => MIN_HEIGHT,
        getValue: () => "",
        setValue: () => {},
        onDraw: () => editor.onFrame(),
      });
      widget.serialize = false;
      this.icmPointsEditor = editor;
      const [width, height] = this.size;
      this.setSize([Math.max(width, 360), Math.max(height, this.computeSize()[1])]);
      return result;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      this.icmPointsEditor?.setRun(output);
    };

    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const result = onConnectionsChange?.apply(this, arguments);
      this.icmPointsEditor?.refreshImage();
      return result;
    };
  },
});

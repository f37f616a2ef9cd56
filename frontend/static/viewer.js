/* slicewise viewer: three linked planes in radiological convention, pixel-exact painting in any of them.
 *
 * The whole volume is fetched once (GET /api/volumes/{id}/voxels, uint16 + offset/scale) and sliced, windowed
 * and drawn in the browser. Masks stay per stored slice: a Uint8Array of exactly np.take(volume, index, axis)
 * (rows = first remaining axis), saved as lossless 8-bit PNG with If-Match versions and read back raw, so
 * what is shown is what is stored. The plane layout (which voxel axes, which flips) comes from the affine.
 */

import { createState, $, IGNORE, key, parseKey, say, api, getJSON } from './viewer-core.js';
import { PLANES, planeLayout, voxelAt, screenOf, sliceOffset, worldPosition } from './viewer-geometry.js';
import { encodeGreyPng } from './viewer-png.js';
import { paintImage, present } from './viewer-draw.js';
import * as jobs from './viewer-jobs.js';

const PRESETS = {
  'ct-soft': [400, 40], 'ct-brain': [80, 40], 'ct-bone': [1800, 400], 'ct-lung': [1500, -600],
};
const PLANE_NAMES = { axial: 'Axial', coronal: 'Coronal', sagittal: 'Sagittal' };
const MAX_UNDO = 100;

// the page's one state object: this module makes it and passes it to the drawing and job modules
const S = createState();
window.S = S;                                   // for tests and the browser console
window.slicewiseEncodePng = encodeGreyPng;      // for tests
Object.defineProperty(S, 'pred', { get: () => activePrediction(), configurable: true });

// ----------------------------------------------------------------------------- views

const activeView = () => S.views[S.active];
const indexOf = (view) => S.cursor[view.layout.axis];
const sliceShape = (axis) => S.volume.shape.filter((_, a) => a !== axis);
const nSlices = (view) => S.volume.shape[view.layout.axis];

function setupViews() {
  for (const plane of PLANES) {
    const canvas = $('canvas-' + plane);
    const layout = planeLayout(S.volume, plane);
    const off = document.createElement('canvas');
    off.width = layout.width; off.height = layout.height;
    const view = {
      plane, layout, canvas, ctx: canvas.getContext('2d'), off, offCtx: off.getContext('2d'),
      image: new ImageData(layout.width, layout.height), queued: false,
    };
    S.views[plane] = view;
    canvas.dataset.axis = layout.axis;
    canvas.dataset.xAxis = layout.xAxis; canvas.dataset.yAxis = layout.yAxis;
    canvas.dataset.flipX = layout.flipX; canvas.dataset.flipY = layout.flipY;
    canvas.dataset.width = layout.width; canvas.dataset.height = layout.height;
    const cell = $('view-' + plane);
    for (const side of ['left', 'right', 'top', 'bottom']) cell.querySelector('.letter.' + side).textContent = layout.letters[side];
    cell.querySelector('.plane-axis').textContent = `voxel axis ${layout.axis}`;
  }
  fitViews();
}

/** Each canvas gets the largest size that fits its cell with every voxel spacing-shaped (mm aspect). */
function fitViews() {
  if (!S.volume) return;
  $('views').dataset.layout = S.layout;
  for (const plane of PLANES) {
    const view = S.views[plane];
    const cell = $('view-' + plane);
    cell.hidden = S.layout === 'one' && plane !== S.active;
    cell.classList.toggle('active', plane === S.active);
    if (cell.hidden) continue;
    const box = cell.querySelector('.view-body');
    const { width, height, pixelWidth, pixelHeight } = view.layout;
    const mmW = width * pixelWidth, mmH = height * pixelHeight;
    const k = Math.max(0.01, Math.min((box.clientWidth - 36) / mmW, (box.clientHeight - 36) / mmH));
    const cssW = Math.max(1, Math.floor(mmW * k)), cssH = Math.max(1, Math.floor(mmH * k));
    view.canvas.style.width = cssW + 'px'; view.canvas.style.height = cssH + 'px';
    const dpr = window.devicePixelRatio || 1;
    view.canvas.width = Math.round(cssW * dpr); view.canvas.height = Math.round(cssH * dpr);
    redraw(view);
  }
}

function redraw(view) {
  if (view.queued) return;
  view.queued = true;
  requestAnimationFrame(() => { view.queued = false; drawView(view); });
}
const redrawAll = () => PLANES.forEach((p) => S.views[p] && redraw(S.views[p]));

function drawView(view) {
  if (!S.voxels || $('view-' + view.plane).hidden) return;
  const index = indexOf(view);
  const k = key(view.layout.axis, index);
  const entry = sliceEntry(k);
  const pred = predictionOf(k);
  let fill = null, outline = null;
  if (S.layer === 'painted') fill = entry.mask;
  else if (S.layer === 'predicted') fill = pred;
  else if (S.layer === 'outline') { fill = entry.mask; outline = pred; }
  // the grey + overlay image only changes with its slice, mask, prediction or display settings; a crosshair
  // move in another plane just redraws the lines over the kept image
  const imageKey = [index, S.layer, entry.state, entry.version, S.paintTick, pred ? S.predModelId : 0, S.window, S.level,
    S.opacity, [...S.hidden].join('-')].join('|');
  const fresh = imageKey !== view.imageKey;
  if (fresh) { paintImage(S, view, index, fill, outline); view.imageKey = imageKey; }
  const cross = screenOf(view.layout, S.cursor);
  const hover = S.hover && S.hover.view === view && isPaintTool() ? footprint(view, S.hover.sx, S.hover.sy) : null;
  present(view, fresh, cross, hover, S.tool && S.tool.kind === 'label' ? S.tool.color : '#ffffff');
  $('view-' + view.plane).querySelector('.slice-no').textContent = `slice ${index} of 0–${nSlices(view) - 1}`;
  if (view.plane === S.active && entry.state === 'ready' && (!S.predReady || pred !== undefined)) {
    document.body.dataset.slice = k;
    S.drawnAt = performance.now();       // when the active plane last showed its slice (the browser benchmark)
  }
}

function refreshViews() { redrawAll(); updateSliceState(); renderMarkers(); }

function setActive(plane) {
  if (plane === S.active) return;
  S.active = plane;
  for (const p of PLANES) $('plane-' + p).setAttribute('aria-pressed', String(p === plane));
  if (S.layout === 'one') fitViews();
  else PLANES.forEach((p) => $('view-' + p).classList.toggle('active', p === plane));
  loadSuggestions().then(() => refreshViews());
}

function setLayout(layout) {
  S.layout = layout;
  $('layout-three').setAttribute('aria-pressed', String(layout === 'three'));
  $('layout-one').setAttribute('aria-pressed', String(layout === 'one'));
  fitViews();
}

// ----------------------------------------------------------------------------- slices: masks and predictions

/** The state of stored slice `k`: its mask (null = unpainted), version, and whether it is loaded. */
function sliceEntry(k) {
  let entry = S.slices.get(k);
  if (!entry) {
    const row = S.annotations.get(k);
    entry = { mask: null, version: row ? row.version : 0, reviewed: row ? !!row.reviewed : false,
      dirty: false, edits: 0, state: row ? 'loading' : 'ready' };
    S.slices.set(k, entry);
    if (row) loadMask(k, entry);
  }
  return entry;
}

async function fetchRaw(path) {
  const response = await api(path);
  return { data: new Uint8Array(await response.arrayBuffer()), headers: response.headers };
}

async function loadMask(k, entry) {
  const [axis, index] = parseKey(k);
  const volumeId = S.volumeId;
  try {
    const got = await fetchRaw(`/volumes/${volumeId}/annotations/${axis}/${index}?format=raw`);
    if (S.volumeId !== volumeId || S.slices.get(k) !== entry) return;
    entry.mask = got.data;
    S.paintTick++;
    entry.version = parseInt(got.headers.get('X-Annotation-Version'), 10);
    entry.reviewed = got.headers.get('X-Annotation-Reviewed') === 'true';
  } catch (err) {
    if (err.status !== 404) say('Could not load the painted slice: ' + err.message, 'error');
  }
  entry.state = 'ready';
  refreshViews();
}

/** The prediction of slice k: a Uint8Array, null (none), or undefined while it loads. */
function predictionOf(k) {
  if (!S.predReady) return null;
  if (S.predCache.has(k)) return S.predCache.get(k);
  S.predCache.set(k, undefined);
  const [axis, index] = parseKey(k);
  const modelId = S.predModelId;
  fetchRaw(`/volumes/${S.volumeId}/prediction/slices/${axis}/${index}.png?format=raw`)
    .then((got) => got.data, () => null)
    .then((data) => { if (S.predModelId === modelId) { S.predCache.set(k, data); refreshViews(); } });
  return undefined;
}

function activePrediction() {
  const view = activeView();
  if (!view || !S.predReady) return null;
  return predictionOf(key(view.layout.axis, indexOf(view))) || null;
}

const anyDirty = () => [...S.slices.values()].some((e) => e.dirty);

// ----------------------------------------------------------------------------- moving around

function goTo(index, plane = S.active) {
  const view = S.views[plane];
  if (!view) return;
  index = Math.max(0, Math.min(nSlices(view) - 1, index));
  if (index === indexOf(view)) return;
  S.cursor[view.layout.axis] = index;
  if (anyDirty()) saveAll();                     // changing slice saves; it never waits for the server
  if (plane === S.active) { $('slice-slider').value = index; }
  redraw(view);
  PLANES.forEach((p) => p !== plane && redraw(S.views[p]));   // the crosshair moved in the other planes
  updateSliceState(); renderMarkers(); showReadout();
}

function moveCursor(view, sx, sy) {
  const ijk = voxelAt(view.layout, indexOf(view), sx, sy);
  const changed = ijk.some((v, a) => v !== S.cursor[a]);
  S.cursor = ijk;
  if (changed && anyDirty()) saveAll();
  refreshViews();
}

// ----------------------------------------------------------------------------- painting

const isPaintTool = () => S.tool && (S.tool.kind === 'label' || S.tool.kind === 'eraser');

function screenPixel(view, event) {
  const rect = view.canvas.getBoundingClientRect();
  const sx = Math.floor((event.clientX - rect.left) / rect.width * view.layout.width);
  const sy = Math.floor((event.clientY - rect.top) / rect.height * view.layout.height);
  return [sx, sy];
}

const inside = (view, sx, sy) => sx >= 0 && sy >= 0 && sx < view.layout.width && sy < view.layout.height;

/** Screen pixels under a round brush of S.brush voxels (of the finer in-plane spacing), round in mm. */
function footprint(view, sx0, sy0) {
  const { pixelWidth: pw, pixelHeight: ph } = view.layout;
  const unit = Math.min(pw, ph);
  const rad = (S.brush - 1) / 2 * unit;
  const limit = rad * rad + 0.25 * unit * unit;
  const nx = Math.ceil(rad / pw), ny = Math.ceil(rad / ph);
  const out = [];
  for (let dy = -ny; dy <= ny; dy++) {
    for (let dx = -nx; dx <= nx; dx++) {
      if ((dx * pw) ** 2 + (dy * ph) ** 2 > limit) continue;
      if (inside(view, sx0 + dx, sy0 + dy)) out.push([sx0 + dx, sy0 + dy]);
    }
  }
  return out;
}

function stamp(view, mask, sx, sy) {
  const value = S.tool.kind === 'label' ? S.tool.value : 0;
  const shape = S.volume.shape;
  for (const [x, y] of footprint(view, sx, sy)) mask[sliceOffset(view.layout, shape, x, y)] = value;
}

function paintLine(view, mask, a, b) {
  S.paintTick++;
  const steps = Math.max(Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]), 1);
  for (let s = 0; s <= steps; s++) {
    stamp(view, mask, Math.round(a[0] + (b[0] - a[0]) * s / steps), Math.round(a[1] + (b[1] - a[1]) * s / steps));
  }
}

/** The mask of slice k ready for an edit: an unpainted slice starts from the prediction when it is shown
 *  (correcting it), else from background. Returns null while the slice is still loading. */
function editableMask(k, entry) {
  if (entry.state !== 'ready') { say('This slice is still loading; try again in a moment.', 'info'); return null; }
  if (!entry.mask) {
    const pred = predictionOf(k);
    if ((S.layer === 'predicted' || S.layer === 'outline') && pred) {
      entry.mask = pred.slice();
      say('Correcting the prediction: your edits are saved as this slice\'s annotation.', 'info');
    } else {
      const [axis] = parseKey(k);
      const [rows, cols] = sliceShape(axis);
      entry.mask = new Uint8Array(rows * cols);
    }
  }
  if (S.layer !== 'painted' && S.layer !== 'outline') setLayer('painted');
  return entry.mask;
}

function beginEdit(k, entry) {
  const before = entry.mask ? entry.mask.slice() : null;
  const mask = editableMask(k, entry);
  if (!mask) return null;
  return { k, before, mask };
}

function commitEdit(edit) {
  const entry = S.slices.get(edit.k);
  S.undo.push({ k: edit.k, before: edit.before, after: entry.mask ? entry.mask.slice() : null });
  if (S.undo.length > MAX_UNDO) S.undo.shift();
  S.redo = [];
  markDirty(entry);
}

function markDirty(entry) {
  entry.dirty = true;
  entry.edits++;
  clearTimeout(S.autosaveTimer);
  S.autosaveTimer = setTimeout(() => { if (anyDirty()) saveAll(); }, 2500);
  updateSliceState(); renderMarkers();
}

/** 2D flood fill from (sx, sy): 4-connected pixels within ±tolerance of the seed's intensity. */
function floodFill(view, sx, sy) {
  const index = indexOf(view);
  const k = key(view.layout.axis, index);
  const edit = beginEdit(k, sliceEntry(k));
  if (!edit) return;
  const { width: w, height: h } = view.layout;
  const shape = S.volume.shape;
  const strides = [shape[1] * shape[2], shape[2], 1];
  const intensity = (x, y) => {
    const ijk = voxelAt(view.layout, index, x, y);
    return S.offset + S.scale * S.voxels[ijk[0] * strides[0] + ijk[1] * strides[1] + ijk[2]];
  };
  const seed = intensity(sx, sy), tol = S.tolerance;
  const value = S.tool.kind === 'fill' ? S.fillValue() : 0;
  const seen = new Uint8Array(w * h);
  const stack = [sx + sy * w];
  seen[sx + sy * w] = 1;
  let filled = 0;
  while (stack.length) {
    const p = stack.pop();
    const x = p % w, y = (p - x) / w;
    edit.mask[sliceOffset(view.layout, shape, x, y)] = value;
    filled++;
    for (const [nx, ny] of [[x - 1, y], [x + 1, y], [x, y - 1], [x, y + 1]]) {
      if (nx < 0 || ny < 0 || nx >= w || ny >= h || seen[nx + ny * w]) continue;
      seen[nx + ny * w] = 1;
      if (Math.abs(intensity(nx, ny) - seed) <= tol) stack.push(nx + ny * w);
    }
  }
  S.paintTick++;
  commitEdit(edit);
  say(`Filled ${filled} pixels within ±${tol} of ${+seed.toPrecision(5)}.`, 'info');
  redrawAll();
}

function onPointerDown(view, event) {
  if (!S.voxels) return;
  event.preventDefault();
  view.canvas.focus();
  setActive(view.plane);
  const [sx, sy] = screenPixel(view, event);
  if (event.button === 1 || event.button === 2) {          // right / middle drag: window and level
    S.wlDrag = { x: event.clientX, y: event.clientY, window: S.window, level: S.level };
    view.canvas.setPointerCapture(event.pointerId);
    return;
  }
  if (event.button !== 0 || !inside(view, sx, sy)) return;
  if (event.shiftKey || S.tool.kind === 'cross') {
    moveCursor(view, sx, sy);
    S.stroke = { view, cross: true };
    view.canvas.setPointerCapture(event.pointerId);
    return;
  }
  if (S.tool.kind === 'fill') { floodFill(view, sx, sy); return; }
  const k = key(view.layout.axis, indexOf(view));
  const edit = beginEdit(k, sliceEntry(k));
  if (!edit) return;
  S.paintTick++;
  S.stroke = { view, edit, last: [sx, sy] };
  paintLine(view, edit.mask, [sx, sy], [sx, sy]);
  view.canvas.setPointerCapture(event.pointerId);
  redrawAll();
}

function onPointerMove(view, event) {
  if (!S.voxels) return;
  const [sx, sy] = screenPixel(view, event);
  if (S.wlDrag) {
    const span = Math.max(1e-6, S.autoWindow);
    const w = S.wlDrag.window + (event.clientX - S.wlDrag.x) * span / 200;
    const l = S.wlDrag.level - (event.clientY - S.wlDrag.y) * span / 200;
    setWindow(Math.max(span / 1000, w), l, 'manual');
    return;
  }
  S.hover = inside(view, sx, sy) ? { view, sx, sy } : null;
  if (S.stroke && S.stroke.cross && (event.buttons & 1)) {
    if (inside(view, sx, sy)) moveCursor(view, sx, sy);
  } else if (S.stroke && S.stroke.edit && (event.buttons & 1)) {
    paintLine(view, S.stroke.edit.mask, S.stroke.last, [sx, sy]);
    S.stroke.last = [sx, sy];
    redrawAll();
  } else {
    redraw(view);
  }
  showReadout();
}

function onPointerUp() {
  if (S.wlDrag) { S.wlDrag = null; return; }
  if (!S.stroke) return;
  const { edit } = S.stroke;
  S.stroke = null;
  if (edit) commitEdit(edit);
}

/** Ctrl+Z / Ctrl+Shift+Z: undo and redo across slices; the slice concerned is brought back on screen. */
function undoRedo(redo) {
  const from = redo ? S.redo : S.undo, to = redo ? S.undo : S.redo;
  if (!from.length) { say(redo ? 'Nothing to redo.' : 'Nothing to undo.', 'info'); return; }
  const step = from.pop();
  to.push(step);
  const entry = sliceEntry(step.k);
  const target = redo ? step.after : step.before;
  entry.mask = target ? target.slice() : null;
  S.paintTick++;
  if (!entry.mask && !entry.version) { entry.dirty = false; entry.edits++; }
  else markDirty(entry);
  const [axis, index] = parseKey(step.k);
  const plane = PLANES.find((p) => S.views[p].layout.axis === axis);
  if (plane !== S.active) setActive(plane);
  if (S.cursor[axis] !== index) goTo(index, plane);
  say(`${redo ? 'Redone' : 'Undone'} on the ${plane} slice ${index}.`, 'info');
  refreshViews();
}

function clearSlice() {
  const view = activeView();
  const k = key(view.layout.axis, indexOf(view));
  const entry = sliceEntry(k);
  if (!entry.mask && !entry.version) { say('This slice has no painting to clear.', 'info'); return; }
  const edit = beginEdit(k, entry);
  if (!edit) return;
  edit.mask.fill(0);
  S.paintTick++;
  commitEdit(edit);
  redrawAll();
}

// ----------------------------------------------------------------------------- saving (PNG + If-Match)

function saveAll() {
  S.saving = S.saving.then(saveDirty, saveDirty);
  return S.saving;
}

async function saveDirty() {
  let ok = true;
  for (const [k, entry] of S.slices) if (entry.dirty) ok = (await saveNow(k, entry)) && ok;
  return ok;
}

async function saveNow(k, entry, force = false) {
  if (!entry.dirty) return true;
  clearTimeout(S.autosaveTimer);
  const [axis, index] = parseKey(k);
  const volumeId = S.volumeId;
  const edits = entry.edits;
  const snapshot = entry.mask ? entry.mask.slice() : null;
  const ifMatch = force ? '*' : `"${entry.version}"`;
  setSaveStatus('saving…');
  try {
    if (snapshot) {
      const [rows, cols] = sliceShape(axis);
      const png = await encodeGreyPng(snapshot, rows, cols);
      const row = await (await api(`/volumes/${volumeId}/annotations/${axis}/${index}`, {
        method: 'PUT', body: png, headers: { 'Content-Type': 'image/png', 'If-Match': ifMatch },
      })).json();
      entry.version = row.version;
      entry.reviewed = !!row.reviewed;
      S.annotations.set(k, row);
    } else {        // undone back to "never painted": the saved annotation goes too
      await api(`/volumes/${volumeId}/annotations/${axis}/${index}`, { method: 'DELETE', headers: { 'If-Match': ifMatch } });
      entry.version = 0; entry.reviewed = false;
      S.annotations.delete(k);
    }
    if (entry.edits === edits) entry.dirty = false;
    if (S.conflict === k) { S.conflict = null; $('conflict').hidden = true; }
    updateSliceState(); renderMarkers(); showTrainingAxis();
    return true;
  } catch (err) {
    if (err.status === 409) {
      S.conflict = k;
      $('conflict-text').textContent = `Someone else saved this slice (axis ${axis}, slice ${index}) since you opened it. ` +
        'Your strokes are still here and not saved. ' + err.message;
      $('conflict').hidden = false;
      say('Not saved: this slice changed on the server (409 conflict). Choose below.', 'error');
    } else {
      say('Not saved: ' + err.message, 'error');
    }
    setSaveStatus('NOT saved');
    return false;
  }
}

function setSaveStatus(text) { $('save-status').textContent = text; }

async function resolveConflict(keepMine) {
  const k = S.conflict;
  if (!k) return;
  $('conflict').hidden = true;
  const entry = S.slices.get(k);
  if (keepMine) {
    entry.dirty = true;
    S.saving = S.saving.then(() => saveNow(k, entry, true));
    if (await S.saving) say('Your strokes were saved over the other version.', 'ok');
  } else {
    S.conflict = null;
    await loadAnnotations();
    S.slices.delete(k);
    sliceEntry(k);
    say('Loaded the version saved on the server.', 'info');
  }
}

// ----------------------------------------------------------------------------- state shown around the views

function updateSliceState() {
  const view = activeView();
  if (!view) return;
  const k = key(view.layout.axis, indexOf(view));
  const entry = sliceEntry(k);
  const painted = !!entry.mask || entry.version > 0;
  const el = $('slice-state');
  el.className = 'badge' + (entry.reviewed ? ' reviewed' : painted ? ' painted' : '');
  el.textContent = entry.reviewed ? 'reviewed' : painted ? (entry.dirty ? 'painted (unsaved)' : 'painted') : 'not painted';
  if (S.conflict !== k || $('conflict').hidden) {
    setSaveStatus(entry.dirty ? 'unsaved strokes' : entry.version ? `saved (version ${entry.version})`
      : entry.state === 'loading' ? 'loading…' : 'not painted');
  }
  $('undo').disabled = !S.undo.length;
  $('redo').disabled = !S.redo.length;
  $('delete-annotation').disabled = !entry.version;
  const canReview = S.predReady && !!predictionOf(k);
  $('accept').disabled = !canReview;
  $('reject').disabled = !canReview;
  const n = nSlices(view);
  $('slice-slider').max = n - 1;
  $('slice-slider').value = indexOf(view);
  $('slice-label').textContent = `${PLANE_NAMES[view.plane]} ${indexOf(view)} of 0–${n - 1}`;
  showReadout();
}

function showReadout() {
  const h = S.hover;
  const view = h ? h.view : activeView();
  if (!view) return;
  const ijk = h ? voxelAt(view.layout, indexOf(view), h.sx, h.sy) : S.cursor;
  const shape = S.volume.shape;
  const q = S.voxels[(ijk[0] * shape[1] + ijk[1]) * shape[2] + ijk[2]];
  const value = S.offset + S.scale * q;
  const mm = worldPosition(S.volume.affine, ijk).map((c) => c.toFixed(1));
  const entry = sliceEntry(key(view.layout.axis, ijk[view.layout.axis]));
  const at = entry.mask ? entry.mask[sliceOffset(view.layout, shape, ...screenOf(view.layout, ijk))] : null;
  const label = at == null || at === IGNORE ? 'unpainted' : at === 0 ? 'background' :
    (S.labels.find((l) => l.value === at) || { name: String(at) }).name;
  $('readout').textContent = `voxel ${ijk.join(', ')} · ${mm.join(', ')} mm (RAS) · ` +
    `value ${+value.toPrecision(6)} · label ${label}`;
}

async function loadAnnotations() {
  const rows = await getJSON(`/volumes/${S.volumeId}/annotations`);
  S.annotations = new Map(rows.map((r) => [key(r.axis, r.index), r]));
}

async function loadSuggestions() {
  const view = activeView();
  try {
    const got = await getJSON(`/volumes/${S.volumeId}/suggestions?axis=${view.layout.axis}&limit=5`);
    S.suggestions = got.slices.map((s) => s.index);
  } catch (err) {
    S.suggestions = [];
  }
  renderMarkers();
}

function renderMarkers() {
  const view = activeView();
  if (!view) return;
  const axis = view.layout.axis, n = nSlices(view);
  const box = $('slice-markers');
  box.textContent = '';
  const painted = [], reviewed = [];
  for (const r of S.annotations.values()) {
    if (r.axis !== axis) continue;
    (r.reviewed ? reviewed : painted).push(r.index);
  }
  painted.sort((a, b) => a - b); reviewed.sort((a, b) => a - b);
  const place = (index, cls, title) => {
    const m = document.createElement('div');
    m.className = 'marker ' + cls;
    m.style.left = (n > 1 ? (index / (n - 1)) * 100 : 0) + '%';
    m.title = title;
    box.appendChild(m);
  };
  S.suggestions.forEach((i) => place(i, 'suggested', `suggested: slice ${i}`));
  painted.forEach((i) => place(i, 'painted', `painted: slice ${i}`));
  reviewed.forEach((i) => place(i, 'reviewed', `reviewed: slice ${i}`));
  $('painted-list').textContent = 'Painted: ' + (painted.length ? painted.join(', ') : 'none');
  $('reviewed-list').textContent = reviewed.length ? 'Reviewed: ' + reviewed.join(', ') : '';
  const sugg = $('suggested-list');
  sugg.textContent = S.suggestions.length ? 'Paint next:' : '';
  S.suggestions.forEach((i) => {
    const b = document.createElement('button');
    b.type = 'button'; b.textContent = i; b.title = `go to suggested slice ${i}`;
    b.className = 'suggestion';
    b.addEventListener('click', () => goTo(i));
    sugg.appendChild(b);
  });
}

/** The trainer slices along one voxel axis (the one with most painted slices across the project): say which. */
function showTrainingAxis() {
  const counts = [0, 1, 2].map((a) => S.otherVolumeAxes[a] + [...S.annotations.values()].filter((r) => r.axis === a).length);
  const total = counts.reduce((a, b) => a + b, 0);
  const planeOf = (axis) => PLANES.find((p) => S.views[p].layout.axis === axis);
  const el = $('train-axis');
  if (!total) { el.textContent = 'Paint a few slices in any plane, then Retrain.'; el.className = 'hint'; return; }
  const axis = counts.indexOf(Math.max(...counts));
  const used = `The model trains on ${planeOf(axis)} slices (voxel axis ${axis}: most painted slices in the project).`;
  const unused = counts.map((c, a) => [c, a]).filter(([c, a]) => c && a !== axis);
  if (!unused.length) { el.textContent = used; el.className = 'hint'; return; }
  el.textContent = used + ' Not used by this retrain: ' +
    unused.map(([c, a]) => `${c} ${planeOf(a)} slice${c > 1 ? 's' : ''}`).join(', ') +
    '. Paint the planes you want trained in one plane.';
  el.className = 'hint warn';
}

async function countOtherVolumes() {
  S.otherVolumeAxes = [0, 0, 0];
  for (const v of S.volumes) {
    if (v.id === S.volumeId) continue;
    try {
      for (const r of await getJSON(`/volumes/${v.id}/annotations`)) S.otherVolumeAxes[r.axis]++;
    } catch (err) { /* a volume removed meanwhile */ }
  }
}

// ----------------------------------------------------------------------------- tools, layers, window/level

function renderTools() {
  const box = $('tools');
  box.textContent = '';
  const tools = S.labels.map((l) => ({ kind: 'label', value: l.value, color: l.color, name: l.name }));
  tools.push({ kind: 'eraser', value: 0, color: '#ffffff', name: 'Eraser' });
  tools.push({ kind: 'fill', value: null, color: '#ffffff', name: 'Fill' });
  tools.push({ kind: 'cross', value: null, color: '#ffffff', name: 'Crosshair' });
  S.toolList = tools;
  for (const t of tools) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'tool';
    b.id = t.kind === 'label' ? `tool-label-${t.value}` : `tool-${t.kind}`;
    b.setAttribute('role', 'radio');
    b.title = { label: `Brush: label ${t.value} (${t.name}); key ${t.value}`, eraser: 'Eraser: paints background (0); key E',
      fill: 'Fill: click fills the connected region within the tolerance with the last label; key F',
      cross: 'Crosshair: click or drag moves the other planes (also Shift+click with any tool)' }[t.kind];
    const sw = document.createElement('span');
    sw.className = 'swatch ' + t.kind;
    if (t.kind === 'label') sw.style.background = t.color;
    b.append(sw, document.createTextNode(t.name));
    b.addEventListener('click', () => selectTool(t));
    box.appendChild(b);
  }
  const vis = $('label-visibility');
  vis.textContent = '';
  for (const l of S.labels) {
    const lab = document.createElement('label');
    const box2 = document.createElement('input');
    box2.type = 'checkbox'; box2.id = `visible-label-${l.value}`; box2.checked = !S.hidden.has(l.value);
    box2.addEventListener('change', () => {
      if (box2.checked) S.hidden.delete(l.value); else S.hidden.add(l.value);
      redrawAll();
    });
    lab.append(box2, document.createTextNode(' ' + l.name));
    vis.appendChild(lab);
  }
  S.lastLabel = tools[0];
  selectTool(tools[0]);
}

S.fillValue = () => (S.lastLabel && S.lastLabel.kind === 'label' ? S.lastLabel.value : 0);

function selectTool(tool) {
  S.tool = tool;
  if (tool.kind === 'label' || tool.kind === 'eraser') S.lastLabel = tool;
  for (const b of $('tools').children) {
    const id = tool.kind === 'label' ? `tool-label-${tool.value}` : `tool-${tool.kind}`;
    b.setAttribute('aria-checked', b.id === id ? 'true' : 'false');
  }
  document.body.dataset.tool = tool.kind;
  redrawAll();
}

function setLayer(layer) {
  if (layer !== 'none') S.lastLayer = layer;
  S.layer = layer;
  $('show-' + layer).checked = true;
  refreshViews();
}

function setWindow(window, level, preset) {
  S.window = window; S.level = level; S.preset = preset;
  $('window').value = +window.toPrecision(5); $('level').value = +level.toPrecision(5);
  $('wl-preset').value = preset;
  redrawAll();
}

function applyPreset(name) {
  if (name === 'auto') setWindow(S.autoWindow, S.autoLevel, name);
  // MR has no absolute units: a narrower window around the volume's own intensity range
  else if (name === 'brain-mr') setWindow(S.autoWindow * 0.8, S.autoLevel + S.autoWindow * 0.05, name);
  else if (PRESETS[name]) setWindow(PRESETS[name][0], PRESETS[name][1], name);
  else $('wl-preset').value = S.preset;
}

function manualWindow() {
  const w = parseFloat($('window').value), l = parseFloat($('level').value);
  if (!(w > 0) || !isFinite(l)) { say('Window must be a positive number and level a number.', 'error'); return; }
  setWindow(w, l, 'manual');
}

// ----------------------------------------------------------------------------- review of the slice on screen

async function review(decision) {
  if (!(await saveAll())) return;
  const view = activeView();
  const axis = view.layout.axis, index = indexOf(view), k = key(axis, index);
  const entry = sliceEntry(k);
  try {
    const response = await api(`/volumes/${S.volumeId}/review/${axis}/${index}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'If-Match': `"${entry.version}"` },
      body: JSON.stringify({ decision }),
    });
    const out = await response.json();
    if (decision === 'accept') {
      S.annotations.set(k, out.annotation);
      S.slices.delete(k);
      sliceEntry(k);
      say(`Slice ${index} accepted: the prediction is now its annotation (reviewed).`, 'ok');
      setLayer('painted');
      jobs.refreshModels(S);
    } else {
      say(`Slice ${index} rejected: paint the correct mask, or leave it for the next retrain.`, 'info');
    }
  } catch (err) {
    say((err.status === 409 ? 'Conflict: this slice changed on the server. ' : 'Review failed: ') + err.message, 'error');
  }
}

async function deleteAnnotation() {
  const view = activeView();
  const axis = view.layout.axis, index = indexOf(view), k = key(axis, index);
  const entry = sliceEntry(k);
  if (!entry.version) return;
  try {
    await api(`/volumes/${S.volumeId}/annotations/${axis}/${index}`,
      { method: 'DELETE', headers: { 'If-Match': `"${entry.version}"` } });
    S.annotations.delete(k);
    S.slices.delete(k);
    say(`Slice ${index} is unpainted again.`, 'info');
    refreshViews(); showTrainingAxis();
  } catch (err) { say('Could not remove the annotation: ' + err.message, 'error'); }
}

// ----------------------------------------------------------------------------- opening a volume

/** The whole volume once, with a progress readout; the views slice it in memory from then on. */
async function loadVoxels(volumeId) {
  const response = await api(`/volumes/${volumeId}/voxels`);
  const total = parseInt(response.headers.get('Content-Length'), 10);
  const buffer = new Uint8Array(total);
  const reader = response.body.getReader();
  let got = 0, lastShown = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer.set(value, got);
    got += value.length;
    if (got - lastShown > total / 20) { say(`Loading the volume… ${Math.round(got / total * 100)}%`, 'info'); lastShown = got; }
  }
  if (got !== total) throw new Error(`the volume arrived incomplete (${got} of ${total} bytes)`);
  return {
    voxels: new Uint16Array(buffer.buffer),
    offset: parseFloat(response.headers.get('X-Intensity-Offset')),
    scale: parseFloat(response.headers.get('X-Intensity-Scale')),
    window: parseFloat(response.headers.get('X-Window')),
    level: parseFloat(response.headers.get('X-Level')),
  };
}

async function openVolume(volumeId) {
  const started = performance.now();
  jobs.stopFollowing(S);
  document.body.dataset.loaded = 'false';
  S.volumeId = volumeId;
  S.voxels = null;
  S.volume = await getJSON(`/volumes/${volumeId}`);
  S.project = await getJSON(`/projects/${S.volume.project_id}`);
  S.labels = S.project.labels;
  S.volumes = await getJSON(`/projects/${S.project.id}/volumes`);
  $('project-name').textContent = S.project.name;
  const picker = $('volume-picker');
  picker.textContent = '';
  for (const v of S.volumes) {
    const o = document.createElement('option');
    o.value = v.id; o.textContent = `${v.name} (#${v.id})`;
    picker.appendChild(o);
  }
  picker.value = String(volumeId);
  const at = S.volumes.findIndex((v) => v.id === volumeId);
  $('prev-volume').disabled = at <= 0;
  $('next-volume').disabled = at < 0 || at >= S.volumes.length - 1;
  $('volume-info').textContent = `${S.volume.shape.join(' × ')} voxels · ` +
    `${S.volume.spacing.map((s) => +s.toFixed(3)).join(' × ')} mm · ${S.volume.orientation}`;
  renderTools();
  S.slices = new Map(); S.predCache = new Map(); S.undo = []; S.redo = []; S.conflict = null;
  $('conflict').hidden = true;
  const [data] = await Promise.all([loadVoxels(volumeId), loadAnnotations()]);
  Object.assign(S, { voxels: data.voxels, offset: data.offset, scale: data.scale,
    autoWindow: data.window, autoLevel: data.level });
  setupViews();
  applyPreset(S.preset === 'manual' ? 'auto' : S.preset);
  S.cursor = S.volume.shape.map((n) => Math.floor(n / 2));
  let axis = null;
  try { axis = (await getJSON(`/volumes/${volumeId}/suggestions?limit=5`)).axis; } catch (err) { /* default */ }
  const plane = PLANES.find((p) => S.views[p].layout.axis === axis) || 'axial';
  S.active = null;
  setActive(plane);
  await loadSuggestions();
  await countOtherVolumes();
  showTrainingAxis();
  await jobs.refreshModelsAndPrediction(S, false);
  await jobs.followRunningJob(S);
  refreshViews(); showReadout();
  const url = new URL(location.href);
  url.searchParams.set('volume', volumeId);
  history.replaceState(null, '', url);
  say(`Opened ${S.volume.name || 'volume ' + volumeId} in ${((performance.now() - started) / 1000).toFixed(1)} s.`, 'ok');
  document.body.dataset.loaded = 'true';
}

async function switchVolume(volumeId) {
  if (anyDirty() && !(await saveAll())) { $('volume-picker').value = String(S.volumeId); return; }
  openVolume(volumeId).catch((err) => say('Could not open the volume: ' + err.message, 'error'));
}

function stepVolume(delta) {
  const at = S.volumes.findIndex((v) => v.id === S.volumeId);
  const next = S.volumes[at + delta];
  if (next) switchVolume(next.id);
}

// ----------------------------------------------------------------------------- wiring

function onKey(e) {
  const tag = (e.target.tagName || '').toLowerCase();
  const typing = (tag === 'input' && !['range', 'radio', 'checkbox', 'button'].includes(e.target.type)) ||
    tag === 'textarea' || tag === 'select';
  if (typing || !S.voxels) return;
  const ctrl = e.ctrlKey || e.metaKey;
  const k = e.key;
  if (ctrl && k.toLowerCase() === 'z') { e.preventDefault(); undoRedo(e.shiftKey); return; }
  if (ctrl && k.toLowerCase() === 'y') { e.preventDefault(); undoRedo(true); return; }
  if (ctrl && k.toLowerCase() === 's') { e.preventDefault(); $('save').click(); return; }
  if (ctrl || e.altKey) return;
  const step = { ArrowLeft: -1, ArrowDown: -1, PageDown: -10, ArrowRight: 1, ArrowUp: 1, PageUp: 10 }[k];
  if (step) { e.preventDefault(); goTo(indexOf(activeView()) + step); return; }
  if (/^[1-9]$/.test(k)) {
    const tool = S.toolList.find((t) => t.kind === 'label' && t.value === parseInt(k, 10));
    if (tool) selectTool(tool);
  } else if (k === '[' || k === ']') {
    S.brush = Math.max(1, Math.min(40, S.brush + (k === '[' ? -1 : 1)));
    $('brush-size').value = S.brush; $('brush-size-value').textContent = S.brush + ' px';
    redrawAll();
  } else if (k === 'e') selectTool(S.toolList.find((t) => t.kind === 'eraser'));
  else if (k === 'f') selectTool(S.toolList.find((t) => t.kind === 'fill'));
  else if (k === 'o') setLayer(S.layer === 'none' ? S.lastLayer : 'none');
  else if (k === 's') $('save').click();
  else return;
  e.preventDefault();
}

function wire() {
  for (const plane of PLANES) {
    const canvas = $('canvas-' + plane);
    const view = () => S.views[plane];
    canvas.addEventListener('pointerdown', (e) => view() && onPointerDown(view(), e));
    canvas.addEventListener('pointermove', (e) => view() && onPointerMove(view(), e));
    canvas.addEventListener('pointerup', onPointerUp);
    canvas.addEventListener('pointercancel', onPointerUp);
    canvas.addEventListener('pointerleave', () => { if (S.hover) { S.hover = null; redrawAll(); } });
    canvas.addEventListener('contextmenu', (e) => e.preventDefault());
    canvas.addEventListener('dblclick', () => { setActive(plane); setLayout(S.layout === 'one' ? 'three' : 'one'); });
    $('view-' + plane).addEventListener('wheel', (e) => {
      if (!view()) return;
      e.preventDefault();
      setActive(plane);
      goTo(indexOf(view()) + (e.deltaY > 0 ? 1 : -1), plane);
    }, { passive: false });
    $('plane-' + plane).addEventListener('click', () => setActive(plane));
  }
  $('layout-three').addEventListener('click', () => setLayout('three'));
  $('layout-one').addEventListener('click', () => setLayout('one'));
  $('slice-slider').addEventListener('input', (e) => goTo(parseInt(e.target.value, 10)));
  $('prev-slice').addEventListener('click', () => goTo(indexOf(activeView()) - 1));
  $('next-slice').addEventListener('click', () => goTo(indexOf(activeView()) + 1));
  $('wl-preset').addEventListener('change', (e) => applyPreset(e.target.value));
  $('window').addEventListener('change', manualWindow);
  $('level').addEventListener('change', manualWindow);
  $('brush-size').addEventListener('input', (e) => {
    S.brush = parseInt(e.target.value, 10);
    $('brush-size-value').textContent = S.brush + ' px';
  });
  $('fill-tolerance').addEventListener('change', (e) => {
    const t = parseFloat(e.target.value);
    if (t >= 0) S.tolerance = t; else say('The fill tolerance must be a number ≥ 0.', 'error');
  });
  $('opacity').addEventListener('input', (e) => {
    S.opacity = parseInt(e.target.value, 10) / 100;
    $('opacity-value').textContent = e.target.value + '%';
    redrawAll();
  });
  for (const layer of ['painted', 'predicted', 'outline', 'none']) {
    $('show-' + layer).addEventListener('change', (e) => { if (e.target.checked) setLayer(layer); });
  }
  $('undo').addEventListener('click', () => undoRedo(false));
  $('redo').addEventListener('click', () => undoRedo(true));
  $('clear-slice').addEventListener('click', clearSlice);
  $('delete-annotation').addEventListener('click', deleteAnnotation);
  $('save').addEventListener('click', async () => {
    if (!anyDirty()) { say('Nothing new to save.', 'info'); return; }
    if (await saveAll()) say(`Saved (${PLANE_NAMES[S.active]} slice ${indexOf(activeView())}).`, 'ok');
  });
  $('conflict-overwrite').addEventListener('click', () => resolveConflict(true));
  $('conflict-reload').addEventListener('click', () => resolveConflict(false));
  $('retrain').addEventListener('click', () => jobs.retrain(S));
  $('cancel-job').addEventListener('click', () => jobs.cancelJob(S));
  $('accept').addEventListener('click', () => review('accept'));
  $('reject').addEventListener('click', () => review('reject'));
  $('volume-picker').addEventListener('change', (e) => switchVolume(parseInt(e.target.value, 10)));
  $('prev-volume').addEventListener('click', () => stepVolume(-1));
  $('next-volume').addEventListener('click', () => stepVolume(1));
  document.addEventListener('keydown', onKey);
  window.addEventListener('resize', fitViews);
  window.addEventListener('beforeunload', (e) => {
    if (!anyDirty()) return;
    // unsaved strokes: ask the browser to warn before leaving (the autosave runs 2.5 s after a stroke)
    e.preventDefault();
    e.returnValue = '';
  });
  Object.assign(S.hooks, { saveAll, anyDirty, setLayer, refreshViews, updateSliceState, loadSuggestions });
}

(async function main() {
  const params = new URLSearchParams(location.search);
  if (params.get('embed')) document.body.classList.add('embed');
  if (params.get('layout') === 'one') S.layout = 'one';
  wire();
  let volumeId = parseInt(params.get('volume'), 10);
  try {
    if (!volumeId) {
      for (const p of await getJSON('/projects')) {
        const vols = await getJSON(`/projects/${p.id}/volumes`);
        if (vols.length) { volumeId = vols[0].id; break; }
      }
    }
    if (!volumeId) { say('No volume yet: create a project and upload a volume on the main page.', 'info'); return; }
    await openVolume(volumeId);
  } catch (err) {
    say('Could not open the volume: ' + err.message, 'error');
  }
})();

/* slicewise viewer: paint slices pixel-exactly, retrain with live progress, review predictions, download masks.
 *
 * Vanilla JS talking to /api directly. Masks are kept as Uint8Array of exactly the slice's shape
 * (np.take(volume, index, axis): rows = first remaining axis) and saved as lossless 8-bit greyscale PNG
 * with If-Match versions; they are read back raw (?format=raw), so what is shown is what is stored.
 */
'use strict';

const IGNORE = 255;
const API = '/api';
const $ = (id) => document.getElementById(id);

const PRESETS = {
  'ct-soft': [400, 40], 'ct-brain': [80, 40], 'ct-bone': [1800, 400], 'ct-lung': [1500, -600],
};
const STAGES = {
  global: 'pretraining (global)', local: 'pretraining (local contrast)', finetune: 'fine-tuning',
  predict: 'predicting all volumes', done: 'done',
};

const S = {
  volumeId: null, volume: null, project: null, labels: [], volumes: [],
  axis: 0, index: 0, rows: 0, cols: 0,
  preset: 'auto', window: null, level: null, autoWindow: null, autoLevel: null,
  grey: null,                      // ImageBitmap / canvas of the grey slice
  mask: null, version: 0, reviewed: false, dirty: false, edits: 0, undo: [],
  pred: null, predModelId: null, predReady: false, predStatus: null,
  layer: 'painted', opacity: 0.5, tool: null, brush: 3, zoom: 8, zoomManual: false,
  annotations: new Map(), suggestions: [], models: [],
  job: null, events: null, pollTimer: null, loadToken: 0, saving: Promise.resolve(), autosaveTimer: null,
  stroke: null, hover: null, conflict: null,
};

// ----------------------------------------------------------------------------- small helpers

function say(text, kind = 'info') {
  const el = $('message');
  el.textContent = text;
  el.title = text;
  el.className = 'message ' + kind;
}

// a state-changing request made with the login cookie echoes the slicewise_csrf cookie as a header
function withCsrfHeader(options) {
  const method = (options.method || 'GET').toUpperCase();
  const cookie = document.cookie.split('; ').find((c) => c.startsWith('slicewise_csrf='));
  if (!cookie || ['GET', 'HEAD', 'OPTIONS'].includes(method)) return options;
  return { ...options, headers: { ...(options.headers || {}), 'X-CSRF-Token': cookie.slice('slicewise_csrf='.length) } };
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(API + path, withCsrfHeader(options));
  } catch (err) {
    throw Object.assign(new Error('cannot reach the slicewise server (' + err.message + ')'), { status: 0 });
  }
  if (response.status === 401 && !path.startsWith('/login')) {
    // authentication is on and the login cookie is missing or expired: log in, then come back here
    location.href = '/login?next=' + encodeURIComponent(location.pathname + location.search);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw Object.assign(new Error(typeof detail === 'string' ? detail : JSON.stringify(detail)),
      { status: response.status });
  }
  return response;
}
const getJSON = async (path) => (await api(path)).json();
const key = (axis, index) => axis + ':' + index;
const nSlices = () => (S.volume ? S.volume.shape[S.axis] : 0);

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function fmtSeconds(s) {
  if (s == null) return '';
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + ' s';
  const m = Math.floor(s / 60);
  return m < 60 ? m + ' min ' + (s % 60) + ' s' : Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
}

// ----------------------------------------------------------------------------- lossless PNG encoder (8-bit grey)

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 255] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function adler32(bytes) {
  let a = 1, b = 0;
  for (let i = 0; i < bytes.length; i++) { a = (a + bytes[i]) % 65521; b = (b + a) % 65521; }
  return ((b << 16) | a) >>> 0;
}

function zlibStored(data) {          // fallback when CompressionStream is missing: uncompressed deflate blocks
  const blocks = Math.max(1, Math.ceil(data.length / 65535));
  const out = new Uint8Array(2 + data.length + blocks * 5 + 4);
  out[0] = 0x78; out[1] = 0x01;
  let o = 2;
  for (let b = 0; b < blocks; b++) {
    const chunk = data.subarray(b * 65535, Math.min(data.length, (b + 1) * 65535));
    out[o++] = b === blocks - 1 ? 1 : 0;
    out[o++] = chunk.length & 255; out[o++] = chunk.length >> 8;
    out[o++] = ~chunk.length & 255; out[o++] = (~chunk.length >> 8) & 255;
    out.set(chunk, o); o += chunk.length;
  }
  const ad = adler32(data);
  out[o++] = ad >>> 24; out[o++] = (ad >>> 16) & 255; out[o++] = (ad >>> 8) & 255; out[o++] = ad & 255;
  return out;
}

async function zlib(data) {
  if (typeof CompressionStream === 'undefined') return zlibStored(data);
  const stream = new Blob([data]).stream().pipeThrough(new CompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function pngChunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

async function encodeGreyPng(mask, rows, cols) {
  const raw = new Uint8Array(rows * (cols + 1));
  for (let r = 0; r < rows; r++) raw.set(mask.subarray(r * cols, (r + 1) * cols), r * (cols + 1) + 1);
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, cols); v.setUint32(4, rows);
  ihdr[8] = 8; ihdr[9] = 0; ihdr[10] = 0; ihdr[11] = 0; ihdr[12] = 0;   // 8-bit greyscale, no interlace
  const parts = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), pngChunk('IHDR', ihdr),
    pngChunk('IDAT', await zlib(raw)), pngChunk('IEND', new Uint8Array(0))];
  return new Blob(parts, { type: 'image/png' });
}
window.slicewiseEncodePng = encodeGreyPng;  // for tests

// ----------------------------------------------------------------------------- drawing

const canvas = $('canvas');
const ctx = canvas.getContext('2d');
const overlayCanvas = document.createElement('canvas');
const overlayCtx = overlayCanvas.getContext('2d');
let drawQueued = false;

function colourTable() {
  const table = new Array(256).fill(null);
  for (const l of S.labels) table[l.value] = hexToRgb(l.color);
  return table;
}

function shownMask() {
  if (S.layer === 'predicted') return S.pred;
  if (S.layer === 'painted') return S.mask;
  return null;
}

function draw() {
  drawQueued = false;
  const { rows, cols, zoom } = S;
  if (!rows || !cols) return;
  if (canvas.width !== cols * zoom || canvas.height !== rows * zoom) {
    canvas.width = cols * zoom; canvas.height = rows * zoom;
  }
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (S.grey) ctx.drawImage(S.grey, 0, 0, cols * zoom, rows * zoom);
  const mask = shownMask();
  if (mask && S.opacity > 0) {
    if (overlayCanvas.width !== cols || overlayCanvas.height !== rows) {
      overlayCanvas.width = cols; overlayCanvas.height = rows;
    }
    const img = overlayCtx.createImageData(cols, rows);
    const colours = colourTable();
    const alpha = Math.round(S.opacity * 255);
    for (let i = 0; i < mask.length; i++) {
      const c = colours[mask[i]];
      if (!c) continue;
      img.data[4 * i] = c[0]; img.data[4 * i + 1] = c[1]; img.data[4 * i + 2] = c[2]; img.data[4 * i + 3] = alpha;
    }
    overlayCtx.putImageData(img, 0, 0);
    ctx.drawImage(overlayCanvas, 0, 0, cols * zoom, rows * zoom);
  }
  if (S.hover) {   // brush outline
    const r = (S.brush / 2) * zoom;
    ctx.strokeStyle = S.tool && S.tool.kind === 'label' ? S.tool.color : '#ffffff';
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.arc((S.hover[1] + 0.5) * zoom, (S.hover[0] + 0.5) * zoom, Math.max(r, 2), 0, 2 * Math.PI);
    ctx.stroke();
  }
}

function redraw() {
  if (!drawQueued) { drawQueued = true; requestAnimationFrame(draw); }
}

function fitZoom() {
  const wrap = $('canvas-wrap');
  if (!S.rows || !S.cols) return;
  const z = Math.floor(Math.min((wrap.clientWidth - 8) / S.cols, (wrap.clientHeight - 8) / S.rows));
  setZoom(Math.max(1, Math.min(40, z)), false);
}

function setZoom(z, manual = true) {
  S.zoom = Math.max(1, Math.min(40, Math.round(z)));
  S.zoomManual = manual || S.zoomManual;
  $('zoom').value = S.zoom;
  $('zoom-value').textContent = S.zoom + '×';
  redraw();
}

// ----------------------------------------------------------------------------- painting

function pixelAt(event) {
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * (canvas.width / rect.width) / S.zoom;
  const y = (event.clientY - rect.top) * (canvas.height / rect.height) / S.zoom;
  return [Math.floor(y), Math.floor(x)];
}

function stamp(r0, c0) {
  const value = S.tool && S.tool.kind === 'label' ? S.tool.value : 0;
  const rad = (S.brush - 1) / 2;
  const lo = Math.floor(-rad), hi = Math.ceil(rad);
  for (let dr = lo; dr <= hi; dr++) {
    for (let dc = lo; dc <= hi; dc++) {
      if (dr * dr + dc * dc > rad * rad + 0.25) continue;
      const r = r0 + dr, c = c0 + dc;
      if (r < 0 || c < 0 || r >= S.rows || c >= S.cols) continue;
      S.mask[r * S.cols + c] = value;
    }
  }
}

function paintLine(a, b) {
  const steps = Math.max(Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]), 1);
  for (let s = 0; s <= steps; s++) {
    stamp(Math.round(a[0] + (b[0] - a[0]) * s / steps), Math.round(a[1] + (b[1] - a[1]) * s / steps));
  }
}

function startMaskIfNeeded() {
  if (S.mask) {
    if (S.layer !== 'painted') setLayer('painted');
    return;
  }
  // An unpainted slice: start from the prediction when correcting it, else from background
  if (S.layer === 'predicted' && S.pred) {
    S.mask = S.pred.slice();
    say('Correcting the prediction: your edits are saved as this slice\'s annotation.', 'info');
  } else {
    S.mask = new Uint8Array(S.rows * S.cols);
  }
  setLayer('painted');
}

function markDirty() {
  S.dirty = true;
  S.edits++;
  $('save-status').textContent = 'unsaved strokes';
  clearTimeout(S.autosaveTimer);
  S.autosaveTimer = setTimeout(() => { if (S.dirty) save().catch(() => {}); }, 2500);
}

canvas.addEventListener('pointerdown', (event) => {
  if (event.button !== 0 || !S.rows) return;
  event.preventDefault();
  canvas.focus();
  const hadMask = !!S.mask;
  startMaskIfNeeded();
  S.undo.push(hadMask ? S.mask.slice() : null);
  if (S.undo.length > 50) S.undo.shift();
  const p = pixelAt(event);
  S.stroke = p;
  paintLine(p, p);
  canvas.setPointerCapture(event.pointerId);
  redraw();
});

canvas.addEventListener('pointermove', (event) => {
  const p = pixelAt(event);
  S.hover = p;
  if (S.stroke && (event.buttons & 1)) {
    paintLine(S.stroke, p);
    S.stroke = p;
  }
  redraw();
});

function endStroke() {
  if (!S.stroke) return;
  S.stroke = null;
  markDirty();
  updateSliceState();
}
canvas.addEventListener('pointerup', endStroke);
canvas.addEventListener('pointercancel', endStroke);
canvas.addEventListener('pointerleave', () => { S.hover = null; redraw(); });
canvas.addEventListener('wheel', (event) => {
  if (!event.ctrlKey) return;
  event.preventDefault();
  setZoom(S.zoom + (event.deltaY < 0 ? 1 : -1));
}, { passive: false });

function undo() {
  if (!S.undo.length) { say('Nothing to undo on this slice.', 'info'); return; }
  const previous = S.undo.pop();
  if (previous === null) {
    // undoing the first stroke of a slice that had no mask: back to all background (still a saved state if
    // a version exists, else simply nothing painted)
    S.mask = S.version ? new Uint8Array(S.rows * S.cols) : null;
    if (!S.version) { S.dirty = false; $('save-status').textContent = 'nothing to save'; updateSliceState(); redraw(); return; }
  } else {
    S.mask = previous;
  }
  markDirty();
  updateSliceState();
  redraw();
}

function clearSlice() {
  if (!S.mask && !S.version) { say('This slice has no painting to clear.', 'info'); return; }
  S.undo.push(S.mask ? S.mask.slice() : null);
  S.mask = new Uint8Array(S.rows * S.cols);
  setLayer('painted');
  markDirty();
  redraw();
}

// ----------------------------------------------------------------------------- saving (PNG + If-Match)

function save() {
  S.saving = S.saving.then(() => saveNow(), () => saveNow());
  return S.saving;
}

async function saveNow(force = false) {
  if (!S.dirty || !S.mask) return true;
  clearTimeout(S.autosaveTimer);
  const { volumeId, axis, index, rows, cols } = S;
  const edits = S.edits;
  const snapshot = S.mask.slice();
  $('save-status').textContent = 'saving…';
  try {
    const png = await encodeGreyPng(snapshot, rows, cols);
    const response = await api(`/volumes/${volumeId}/annotations/${axis}/${index}`, {
      method: 'PUT', body: png,
      headers: { 'Content-Type': 'image/png', 'If-Match': force ? '*' : `"${S.version}"` },
    });
    const row = await response.json();
    if (S.volumeId === volumeId && S.axis === axis && S.index === index) {
      S.version = row.version;
      S.reviewed = !!row.reviewed;
      if (S.edits === edits) { S.dirty = false; }
    }
    S.annotations.set(key(axis, index), row);
    $('save-status').textContent = S.dirty ? 'unsaved strokes' : `saved (version ${row.version})`;
    $('conflict').hidden = true;
    renderMarkers();
    updateSliceState();
    return true;
  } catch (err) {
    if (err.status === 409) {
      S.conflict = { axis, index };
      $('conflict-text').textContent = 'Someone else saved this slice since you opened it. ' +
        'Your strokes are still here and not saved. ' + err.message;
      $('conflict').hidden = false;
      say('Not saved: this slice changed on the server (409 conflict). Choose below.', 'error');
    } else {
      say('Not saved: ' + err.message, 'error');
    }
    $('save-status').textContent = 'NOT saved';
    return false;
  }
}

async function leaveSlice() {
  if (!S.dirty) return true;
  await save();
  return !S.dirty;
}

// ----------------------------------------------------------------------------- loading a slice

function windowQuery() {
  if (S.preset === 'auto') return '';
  const params = new URLSearchParams();
  if (S.window != null && S.window > 0) params.set('window', S.window);
  if (S.level != null && isFinite(S.level)) params.set('level', S.level);
  const q = params.toString();
  return q ? '?' + q : '';
}

async function fetchRaw(path) {
  const response = await api(path);
  return { data: new Uint8Array(await response.arrayBuffer()), headers: response.headers };
}

async function loadSlice() {
  const token = ++S.loadToken;
  const { volumeId, axis, index } = S;
  const n = nSlices();
  $('slice-slider').max = n - 1;
  $('slice-slider').value = index;
  $('slice-label').textContent = `slice ${index} of 0–${n - 1}`;
  const shape = S.volume.shape.filter((_, a) => a !== axis);
  try {
    const greyResp = await api(`/volumes/${volumeId}/slices/${axis}/${index}.png${windowQuery()}`);
    const bitmap = await createImageBitmap(await greyResp.blob());
    let mask = null, version = 0, reviewed = false, pred = null;
    if (S.annotations.has(key(axis, index))) {
      const got = await fetchRaw(`/volumes/${volumeId}/annotations/${axis}/${index}?format=raw`);
      mask = got.data;
      version = parseInt(got.headers.get('X-Annotation-Version'), 10);
      reviewed = got.headers.get('X-Annotation-Reviewed') === 'true';
    }
    if (S.predReady) {
      try {
        pred = (await fetchRaw(`/volumes/${volumeId}/prediction/slices/${axis}/${index}.png?format=raw`)).data;
      } catch (err) { pred = null; }
    }
    if (token !== S.loadToken) return;   // a newer slice was asked for meanwhile
    const w = parseFloat(greyResp.headers.get('X-Window')), l = parseFloat(greyResp.headers.get('X-Level'));
    if (S.preset === 'auto') { S.autoWindow = w; S.autoLevel = l; }
    $('window').value = +w.toPrecision(5); $('level').value = +l.toPrecision(5);
    if (S.grey && S.grey.close) S.grey.close();
    S.grey = bitmap;
    S.rows = shape[0]; S.cols = shape[1];
    S.mask = mask; S.version = version; S.reviewed = reviewed; S.pred = pred;
    S.dirty = false; S.undo = [];
    $('save-status').textContent = mask ? `saved (version ${version})` : 'not painted';
    $('conflict').hidden = true;
    if (!S.zoomManual) fitZoom();
    updateSliceState();
    renderMarkers();
    redraw();
    document.body.dataset.slice = `${axis}:${index}`;
  } catch (err) {
    if (token === S.loadToken) say('Could not load the slice: ' + err.message, 'error');
  }
}

async function goTo(index, axis = S.axis) {
  const n = S.volume ? S.volume.shape[axis] : 0;
  index = Math.max(0, Math.min(n - 1, index));
  if (index === S.index && axis === S.axis && S.rows) return;
  if (!(await leaveSlice())) {
    $('slice-slider').value = S.index;
    return;
  }
  const axisChanged = axis !== S.axis;
  S.axis = axis; S.index = index;
  $('axis').value = String(axis);
  if (axisChanged) { S.zoomManual = false; await loadSuggestions(); }
  await loadSlice();
}

function updateSliceState() {
  const el = $('slice-state');
  const painted = !!S.mask || S.version > 0;
  el.className = 'badge' + (S.reviewed ? ' reviewed' : painted ? ' painted' : '');
  el.textContent = S.reviewed ? 'reviewed' : painted ? (S.dirty ? 'painted (unsaved)' : 'painted') : 'not painted';
  $('undo').disabled = !S.undo.length;
  $('delete-annotation').disabled = !S.version;
  const canReview = S.predReady && !!S.pred;
  $('accept').disabled = !canReview;
  $('reject').disabled = !canReview;
}

// ----------------------------------------------------------------------------- markers and suggestions

async function loadAnnotations() {
  const rows = await getJSON(`/volumes/${S.volumeId}/annotations`);
  S.annotations = new Map(rows.map((r) => [key(r.axis, r.index), r]));
}

async function loadSuggestions(axis = S.axis) {
  try {
    const got = await getJSON(`/volumes/${S.volumeId}/suggestions?axis=${axis}&limit=5`);
    S.suggestions = got.slices.map((s) => s.index);
  } catch (err) {
    S.suggestions = [];
  }
  renderMarkers();
}

function renderMarkers() {
  const n = nSlices();
  const box = $('slice-markers');
  box.textContent = '';
  const painted = [], reviewed = [];
  for (const r of S.annotations.values()) {
    if (r.axis !== S.axis) continue;
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

// ----------------------------------------------------------------------------- tools and layers

function renderTools() {
  const box = $('tools');
  box.textContent = '';
  const tools = S.labels.map((l) => ({ kind: 'label', value: l.value, color: l.color, name: l.name }));
  tools.push({ kind: 'eraser', value: 0, color: '#ffffff', name: 'Eraser (background)' });
  for (const t of tools) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'tool';
    b.id = t.kind === 'eraser' ? 'tool-eraser' : `tool-label-${t.value}`;
    b.setAttribute('role', 'radio');
    b.title = t.kind === 'eraser' ? 'Eraser: paints background (0)' : `Brush: label ${t.value} (${t.name})`;
    const sw = document.createElement('span');
    sw.className = 'swatch';
    sw.style.background = t.kind === 'eraser' ? 'repeating-linear-gradient(45deg,#fff 0 3px,#999 3px 6px)' : t.color;
    b.append(sw, document.createTextNode(t.kind === 'eraser' ? 'Eraser' : t.name));
    b.addEventListener('click', () => selectTool(t));
    box.appendChild(b);
  }
  selectTool(tools[0]);
}

function selectTool(tool) {
  S.tool = tool;
  for (const b of $('tools').children) {
    const on = b.id === (tool.kind === 'eraser' ? 'tool-eraser' : `tool-label-${tool.value}`);
    b.setAttribute('aria-checked', on ? 'true' : 'false');
  }
}

function setLayer(layer) {
  S.layer = layer;
  $('show-' + layer).checked = true;
  redraw();
}

// ----------------------------------------------------------------------------- window / level

function applyPreset(name) {
  S.preset = name;
  if (name === 'auto') { S.window = null; S.level = null; }
  else if (name === 'brain-mr') {
    // MR has no absolute units: a narrower window around the volume's own intensity range
    const w = S.autoWindow || 1, l = S.autoLevel || 0;
    S.window = +(w * 0.8).toPrecision(5); S.level = +(l + w * 0.05).toPrecision(5);
  } else if (PRESETS[name]) { [S.window, S.level] = PRESETS[name]; }
  $('wl-preset').value = name;
  loadSlice();
}

function manualWindow() {
  const w = parseFloat($('window').value), l = parseFloat($('level').value);
  if (!(w > 0) || !isFinite(l)) { say('Window must be a positive number and level a number.', 'error'); return; }
  S.preset = 'manual'; S.window = w; S.level = l;
  $('wl-preset').value = 'manual';
  loadSlice();
}

// ----------------------------------------------------------------------------- retrain: job + live events

function showJob(job) {
  S.job = job;
  const pct = Math.round((job.progress || 0) * 100);
  $('progress').setAttribute('aria-valuenow', String(pct));
  $('progress-fill').style.width = pct + '%';
  document.body.dataset.jobState = job.state;
  const stage = STAGES[job.stage] || job.stage || '';
  const parts = [];
  if (job.state === 'queued') parts.push('Queued — waiting for the worker');
  else if (job.state === 'running') {
    parts.push(`${pct}%`);
    if (stage) parts.push(stage);
    if (job.epoch != null && job.stage !== 'predict') parts.push(`epoch ${job.epoch}`);
    if (job.eta_s != null && job.eta_s > 0) parts.push(`about ${fmtSeconds(job.eta_s)} left`);
  } else if (job.state === 'succeeded') parts.push('Finished');
  else if (job.state === 'cancelled') parts.push('Cancelled: the previous model stays active');
  else if (job.state === 'failed') parts.push('Retrain failed');
  const mode = modeLabel(job);
  let text = `Job ${job.id}` + (mode ? ` (${mode})` : '') + ': ' + parts.join(' · ');
  const redundant = job.state === 'running' && /^training:/.test(job.message || '');  // stage + epoch say it
  if (job.message && job.state !== 'failed' && !redundant) text += (job.state === 'running' ? ' — ' : ': ') + job.message;
  $('progress-text').textContent = text;
  const active = job.state === 'queued' || job.state === 'running';
  $('retrain').disabled = active;
  $('cancel-job').disabled = !active;
  const errorBox = $('job-error');
  if (job.state === 'failed') {
    errorBox.textContent = 'The retrain failed: ' + (job.error || job.message || 'no reason given') +
      '. Your annotations are kept; the previous model stays active.';
    errorBox.hidden = false;
  } else { errorBox.hidden = true; }
}

// what the job does: the worker decides "refresh" or "full" when it starts ("auto" until then)
function modeLabel(job) {
  if (job.mode === 'refresh') return job.from_model_id != null ? `Refresh: fine-tune from model ${job.from_model_id}` : 'Refresh';
  if (job.mode === 'full') return job.global_stage === 'reused' ? 'Full retrain, global stage reused' : 'Full retrain';
  if (job.mode === 'auto') return 'Auto';
  return '';
}

function stopFollowing() {
  if (S.events) { S.events.close(); S.events = null; }
  clearTimeout(S.pollTimer);
}

function follow(jobId) {
  stopFollowing();
  const es = new EventSource(`${API}/jobs/${jobId}/events`);
  S.events = es;
  es.addEventListener('progress', (e) => showJob(JSON.parse(e.data)));
  es.addEventListener('retry', (e) => {
    const d = JSON.parse(e.data);
    say('Out of memory: retrying with a smaller setting. ' + (d.message || ''), 'info');
  });
  es.addEventListener('end', (e) => { stopFollowing(); finished(JSON.parse(e.data)); });
  es.onerror = () => {      // stream broke (server restart, proxy): fall back to polling
    if (S.events !== es) return;
    es.close(); S.events = null;
    poll(jobId);
  };
}

async function poll(jobId) {
  try {
    const job = await getJSON(`/jobs/${jobId}`);
    if (['succeeded', 'failed', 'cancelled'].includes(job.state)) { finished(job); return; }
    showJob(job);
  } catch (err) { say('Lost track of the retrain: ' + err.message, 'error'); }
  S.pollTimer = setTimeout(() => poll(jobId), 2000);
}

async function finished(job) {
  showJob(job);
  if (job.state === 'succeeded') say('Retrain finished: predictions are ready to review.', 'ok');
  else if (job.state === 'failed') say('Retrain failed — see the message under the progress bar.', 'error');
  else say('Retrain cancelled.', 'info');
  await refreshModelsAndPrediction(job.state === 'succeeded');
}

async function retrain() {
  if (!(await leaveSlice())) return;   // train on what is on screen, never lose the last strokes
  const preset = $('preset').value;
  const mode = $('retrain-mode').value;
  const body = { mode };
  if (preset) body.preset = preset;
  try {
    const response = await api(`/projects/${S.project.id}/train`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const job = await response.json();
    showJob(job);
    say(job.coalesced ? 'A retrain was already queued: your request joined it.' : 'Retrain started.', 'info');
    follow(job.id);
  } catch (err) {
    say('Could not start the retrain: ' + err.message, 'error');
  }
}

async function cancelJob() {
  if (!S.job) return;
  try {
    showJob(await (await api(`/jobs/${S.job.id}/cancel`, { method: 'POST' })).json());
  } catch (err) { say('Could not cancel: ' + err.message, 'error'); }
}

// ----------------------------------------------------------------------------- models, predictions, review

function modelScore(m) {
  const v = (m.metrics || {}).validation || {};
  if (typeof v.dice_mean === 'number') {
    const per = Array.isArray(v.dice_per_class) ? ' (' + v.dice_per_class.map((d) => d.toFixed(2)).join(' / ') + ')' : '';
    return `validation Dice ${v.dice_mean.toFixed(3)}${per}`;
  }
  return 'no validation score';
}

function renderModels() {
  const list = $('models');
  list.textContent = '';
  if (!S.models.length) {
    const li = document.createElement('li');
    li.className = 'muted'; li.textContent = 'No model yet: paint a few slices and press Retrain.';
    list.appendChild(li);
    return;
  }
  for (const m of [...S.models].reverse()) {
    const li = document.createElement('li');
    li.id = `model-${m.id}`;
    li.value = m.id;
    if (m.active) li.className = 'active';
    const when = (m.created || '').replace('T', ' ').slice(0, 16);
    li.append(document.createTextNode(`Model ${m.id}${m.active ? ' (active)' : ''} — ${modelScore(m)}; ` +
      `${m.annotated_slices} painted slices; ${when}`));
    if (!m.active) {
      const b = document.createElement('button');
      b.type = 'button'; b.id = `activate-${m.id}`;
      b.textContent = 'Use this version';
      b.title = `Roll back / switch to model ${m.id}`;
      b.addEventListener('click', () => activate(m.id));
      li.appendChild(b);
    }
    list.appendChild(li);
  }
}

async function activate(modelId) {
  try {
    await api(`/projects/${S.project.id}/models/${modelId}/activate`, { method: 'POST' });
    say(`Model ${modelId} is now active.`, 'ok');
    await refreshModelsAndPrediction(true);
  } catch (err) { say('Could not switch model: ' + err.message, 'error'); }
}

function setDownloads() {
  const ready = S.predReady;
  const set = (id, href) => {
    const a = $(id);
    if (ready) { a.href = href; a.classList.remove('disabled'); a.removeAttribute('aria-disabled'); a.setAttribute('download', ''); }
    else { a.removeAttribute('href'); a.classList.add('disabled'); a.setAttribute('aria-disabled', 'true'); }
  };
  set('download-nifti', `${API}/volumes/${S.volumeId}/prediction.nii.gz`);
  set('download-dicom', `${API}/volumes/${S.volumeId}/prediction.dcm`);
  set('download-zip', `${API}/projects/${S.project.id}/predictions.zip`);
  $('download-dicom-item').hidden = !(S.volume && S.volume.source === 'dicom');
}

let predictionPoll = null;
async function refreshModelsAndPrediction(showPrediction = false) {
  clearTimeout(predictionPoll);
  try {
    S.models = await getJSON(`/projects/${S.project.id}/models`);
    renderModels();
    const st = await getJSON(`/volumes/${S.volumeId}/prediction`);
    S.predStatus = st;
    const wasReady = S.predReady && S.predModelId === st.model_id;
    S.predReady = st.status === 'ready';
    S.predModelId = st.model_id;
    const text = {
      none: 'No prediction yet: paint a few slices and press Retrain.',
      pending: `Model ${st.model_id} is predicting this volume…`,
      ready: `Prediction of model ${st.model_id} is shown under “Predicted”.`,
    }[st.status] || `Prediction: ${st.status}`;
    $('prediction-status').textContent = text;
    document.body.dataset.ready = String(S.predReady);
    setDownloads();
    if (st.status === 'pending') predictionPoll = setTimeout(() => refreshModelsAndPrediction(showPrediction), 2000);
    if (S.predReady && !wasReady) {
      await loadSuggestions();
      if (showPrediction && !S.dirty) { S.layer = 'predicted'; $('show-predicted').checked = true; }
      if (!S.dirty) await loadSlice();
    }
    updateSliceState();
  } catch (err) { say('Could not load models / prediction: ' + err.message, 'error'); }
}

async function review(decision) {
  if (!(await leaveSlice())) return;
  const { axis, index } = S;
  try {
    const response = await api(`/volumes/${S.volumeId}/review/${axis}/${index}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'If-Match': `"${S.version}"` },
      body: JSON.stringify({ decision }),
    });
    const out = await response.json();
    if (decision === 'accept') {
      S.annotations.set(key(axis, index), out.annotation);
      say(`Slice ${index} accepted: the prediction is now its annotation (reviewed).`, 'ok');
      await loadSlice();
      setLayer('painted');
    } else {
      say(`Slice ${index} rejected: paint the correct mask, or leave it for the next retrain.`, 'info');
    }
  } catch (err) {
    say((err.status === 409 ? 'Conflict: this slice changed on the server. ' : 'Review failed: ') + err.message, 'error');
  }
}

async function deleteAnnotation() {
  if (!S.version) return;
  try {
    await api(`/volumes/${S.volumeId}/annotations/${S.axis}/${S.index}`,
      { method: 'DELETE', headers: { 'If-Match': `"${S.version}"` } });
    S.annotations.delete(key(S.axis, S.index));
    say(`Slice ${S.index} is unpainted again.`, 'info');
    S.dirty = false;
    await loadSlice();
  } catch (err) { say('Could not remove the annotation: ' + err.message, 'error'); }
}

async function resolveConflict(keepMine) {
  $('conflict').hidden = true;
  if (keepMine) {
    S.dirty = true;
    S.saving = S.saving.then(() => saveNow(true));
    if (await S.saving) say('Your strokes were saved over the other version.', 'ok');
  } else {
    S.dirty = false;
    await loadAnnotations();
    await loadSlice();
    say('Loaded the version saved on the server.', 'info');
  }
}

// ----------------------------------------------------------------------------- start-up and wiring

async function openVolume(volumeId) {
  stopFollowing();
  S.volumeId = volumeId;
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
  $('volume-info').textContent = `${S.volume.shape.join(' × ')} voxels · ${S.volume.spacing.map((s) => +s.toFixed(3)).join(' × ')} mm · ${S.volume.orientation}`;
  renderTools();
  await loadAnnotations();
  let axis = 0;
  try { axis = (await getJSON(`/volumes/${volumeId}/suggestions?limit=5`)).axis; } catch (err) { /* default */ }
  S.axis = axis; $('axis').value = String(axis);
  S.index = Math.floor(S.volume.shape[axis] / 2);
  S.zoomManual = false; S.rows = 0;
  await loadSuggestions(axis);
  await refreshModelsAndPrediction(false);
  await loadSlice();
  // follow a retrain already running for the project (e.g. started in another tab)
  try {
    const jobs = await getJSON(`/projects/${S.project.id}/jobs`);
    const last = jobs[jobs.length - 1];
    if (last) {
      showJob(last);
      if (last.state === 'queued' || last.state === 'running') follow(last.id);
    }
  } catch (err) { /* older server without the jobs list */ }
  const url = new URL(location.href);
  url.searchParams.set('volume', volumeId);
  history.replaceState(null, '', url);
  document.body.dataset.loaded = 'true';
}

function wire() {
  $('slice-slider').addEventListener('input', (e) => goTo(parseInt(e.target.value, 10)));
  $('prev-slice').addEventListener('click', () => goTo(S.index - 1));
  $('next-slice').addEventListener('click', () => goTo(S.index + 1));
  $('axis').addEventListener('change', (e) => {
    const axis = parseInt(e.target.value, 10);
    goTo(Math.floor(S.volume.shape[axis] / 2), axis);
  });
  $('wl-preset').addEventListener('change', (e) => applyPreset(e.target.value));
  $('window').addEventListener('change', manualWindow);
  $('level').addEventListener('change', manualWindow);
  $('zoom').addEventListener('input', (e) => setZoom(parseInt(e.target.value, 10)));
  $('zoom-fit').addEventListener('click', () => { S.zoomManual = false; fitZoom(); });
  $('brush-size').addEventListener('input', (e) => {
    S.brush = parseInt(e.target.value, 10);
    $('brush-size-value').textContent = S.brush + ' px';
  });
  $('opacity').addEventListener('input', (e) => {
    S.opacity = parseInt(e.target.value, 10) / 100;
    $('opacity-value').textContent = e.target.value + '%';
    redraw();
  });
  for (const id of ['show-painted', 'show-predicted', 'show-none']) {
    $(id).addEventListener('change', (e) => { if (e.target.checked) setLayer(e.target.value); });
  }
  $('undo').addEventListener('click', undo);
  $('clear-slice').addEventListener('click', clearSlice);
  $('delete-annotation').addEventListener('click', deleteAnnotation);
  $('save').addEventListener('click', async () => {
    if (!S.dirty) { say('Nothing new to save on this slice.', 'info'); return; }
    if (await save()) say(`Slice ${S.index} saved.`, 'ok');
  });
  $('conflict-overwrite').addEventListener('click', () => resolveConflict(true));
  $('conflict-reload').addEventListener('click', () => resolveConflict(false));
  $('retrain').addEventListener('click', retrain);
  $('cancel-job').addEventListener('click', cancelJob);
  $('accept').addEventListener('click', () => review('accept'));
  $('reject').addEventListener('click', () => review('reject'));
  $('volume-picker').addEventListener('change', async (e) => {
    if (!(await leaveSlice())) { e.target.value = String(S.volumeId); return; }
    openVolume(parseInt(e.target.value, 10)).catch((err) => say(err.message, 'error'));
  });
  document.addEventListener('keydown', (e) => {
    const tag = (e.target.tagName || '').toLowerCase();
    const typing = tag === 'input' && !['range', 'radio', 'checkbox', 'button'].includes(e.target.type) || tag === 'textarea' || tag === 'select';
    if (typing) return;
    if (e.key === 'ArrowLeft' || e.key === 'ArrowRight') {
      e.preventDefault();
      goTo(S.index + (e.key === 'ArrowLeft' ? -1 : 1));
    } else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'z') {
      e.preventDefault(); undo();
    }
  });
  window.addEventListener('resize', () => { if (!S.zoomManual) fitZoom(); });
  window.addEventListener('beforeunload', (e) => {
    if (!S.dirty || !S.mask) return;
    // unsaved strokes: ask the browser to warn before leaving (the autosave runs 2.5 s after a stroke)
    e.preventDefault();
    e.returnValue = '';
  });
}

(async function main() {
  const params = new URLSearchParams(location.search);
  if (params.get('embed')) document.body.classList.add('embed');
  wire();
  let volumeId = parseInt(params.get('volume'), 10);
  try {
    if (!volumeId) {
      const projects = await getJSON('/projects');
      for (const p of projects) {
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

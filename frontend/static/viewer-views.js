/* The three plane views: their canvases fitted to the page, drawn when their slice or the display changes,
 * which plane is active and whether one or three are shown. */

import { $, key } from './viewer-core.js';
import { PLANES, planeLayout, screenOf } from './viewer-geometry.js';
import { paintImage, present } from './viewer-draw.js';
import { indexOf, nSlices, isPaintTool } from './viewer-state.js';
import { sliceEntry, predictionOf } from './viewer-slices.js';
import { footprint } from './viewer-brush.js';
import { updateSliceState } from './viewer-status.js';
import { loadSuggestions, renderMarkers } from './viewer-suggestions.js';

export function setupViews(S) {
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
  fitViews(S);
}

/** Each canvas gets the largest size that fits its cell with every voxel spacing-shaped (mm aspect). */
export function fitViews(S) {
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
    redraw(S, view);
  }
}

/** Draw the view at the next animation frame (once, however often it is asked for before then). */
export function redraw(S, view) {
  if (view.queued) return;
  view.queued = true;
  requestAnimationFrame(() => { view.queued = false; drawView(S, view); });
}

export function redrawAll(S) {
  PLANES.forEach((p) => S.views[p] && redraw(S, S.views[p]));
}

function drawView(S, view) {
  if (!S.voxels || $('view-' + view.plane).hidden) return;
  const index = indexOf(S, view);
  const k = key(view.layout.axis, index);
  const entry = sliceEntry(S, k);
  const pred = predictionOf(S, k);
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
  const hover = S.hover && S.hover.view === view && isPaintTool(S) ? footprint(S, view, S.hover.sx, S.hover.sy) : null;
  present(view, fresh, cross, hover, S.tool && S.tool.kind === 'label' ? S.tool.color : '#ffffff');
  $('view-' + view.plane).querySelector('.slice-no').textContent = `slice ${index} of 0–${nSlices(S, view) - 1}`;
  if (view.plane === S.active && entry.state === 'ready' && (!S.predReady || pred !== undefined)) {
    document.body.dataset.slice = k;
    S.drawnAt = performance.now();       // when the active plane last showed its slice (the browser benchmark)
  }
}

/** The views, the slice's state line and the slider's markers, after anything about the slices changed. */
export function refreshViews(S) { redrawAll(S); updateSliceState(S); renderMarkers(S); }

export function setActive(S, plane) {
  if (plane === S.active) return;
  S.active = plane;
  for (const p of PLANES) $('plane-' + p).setAttribute('aria-pressed', String(p === plane));
  if (S.layout === 'one') fitViews(S);
  else PLANES.forEach((p) => $('view-' + p).classList.toggle('active', p === plane));
  loadSuggestions(S).then(() => refreshViews(S));
}

export function setLayout(S, layout) {
  S.layout = layout;
  $('layout-three').setAttribute('aria-pressed', String(layout === 'three'));
  $('layout-one').setAttribute('aria-pressed', String(layout === 'one'));
  fitViews(S);
}

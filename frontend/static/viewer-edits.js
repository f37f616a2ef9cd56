/* Edits of a slice's mask as undoable steps: a stroke, a flood fill, clearing the slice; undo and redo
 * across slices. Every edit marks its slice unsaved and schedules the autosave. */

import { key, parseKey, say } from './viewer-core.js';
import { PLANES, voxelAt, sliceOffset } from './viewer-geometry.js';
import { activeView, indexOf, sliceShape, anyDirty } from './viewer-state.js';
import { sliceEntry, predictionOf } from './viewer-slices.js';
import { redrawAll, refreshViews, setActive } from './viewer-views.js';
import { goTo } from './viewer-navigation.js';
import { setLayer } from './viewer-display.js';
import { saveAll } from './viewer-save.js';
import { updateSliceState } from './viewer-status.js';
import { renderMarkers } from './viewer-suggestions.js';

const MAX_UNDO = 100;
const AUTOSAVE_MS = 2500;

/** The mask of slice k ready for an edit: an unpainted slice starts from the prediction when it is shown
 *  (correcting it), else from background. Returns null while the slice is still loading. */
function editableMask(S, k, entry) {
  if (entry.state !== 'ready') { say('This slice is still loading; try again in a moment.', 'info'); return null; }
  if (!entry.mask) {
    const pred = predictionOf(S, k);
    if ((S.layer === 'predicted' || S.layer === 'outline') && pred) {
      entry.mask = pred.slice();
      say('Correcting the prediction: your edits are saved as this slice\'s annotation.', 'info');
    } else {
      const [axis] = parseKey(k);
      const [rows, cols] = sliceShape(S, axis);
      entry.mask = new Uint8Array(rows * cols);
    }
  }
  if (S.layer !== 'painted' && S.layer !== 'outline') setLayer(S, 'painted');
  return entry.mask;
}

/** An edit of slice k under way: its mask before (for undo) and the mask to change; null while loading. */
export function beginEdit(S, k, entry) {
  const before = entry.mask ? entry.mask.slice() : null;
  const mask = editableMask(S, k, entry);
  if (!mask) return null;
  return { k, before, mask };
}

export function commitEdit(S, edit) {
  const entry = S.slices.get(edit.k);
  S.undo.push({ k: edit.k, before: edit.before, after: entry.mask ? entry.mask.slice() : null });
  if (S.undo.length > MAX_UNDO) S.undo.shift();
  S.redo = [];
  markDirty(S, entry);
}

function markDirty(S, entry) {
  entry.dirty = true;
  entry.edits++;
  clearTimeout(S.autosaveTimer);
  S.autosaveTimer = setTimeout(() => { if (anyDirty(S)) saveAll(S); }, AUTOSAVE_MS);
  updateSliceState(S); renderMarkers(S);
}

const fillValue = (S) => (S.lastLabel && S.lastLabel.kind === 'label' ? S.lastLabel.value : 0);

/** 2D flood fill from (sx, sy): 4-connected pixels within ±tolerance of the seed's intensity. */
export function floodFill(S, view, sx, sy) {
  const index = indexOf(S, view);
  const k = key(view.layout.axis, index);
  const edit = beginEdit(S, k, sliceEntry(S, k));
  if (!edit) return;
  const { width: w, height: h } = view.layout;
  const shape = S.volume.shape;
  const strides = [shape[1] * shape[2], shape[2], 1];
  const intensity = (x, y) => {
    const ijk = voxelAt(view.layout, index, x, y);
    return S.offset + S.scale * S.voxels[ijk[0] * strides[0] + ijk[1] * strides[1] + ijk[2]];
  };
  const seed = intensity(sx, sy), tol = S.tolerance;
  const value = S.tool.kind === 'fill' ? fillValue(S) : 0;
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
  commitEdit(S, edit);
  say(`Filled ${filled} pixels within ±${tol} of ${+seed.toPrecision(5)}.`, 'info');
  redrawAll(S);
}

/** Ctrl+Z / Ctrl+Shift+Z: undo and redo across slices; the slice concerned is brought back on screen. */
export function undoRedo(S, redo) {
  const from = redo ? S.redo : S.undo, to = redo ? S.undo : S.redo;
  if (!from.length) { say(redo ? 'Nothing to redo.' : 'Nothing to undo.', 'info'); return; }
  const step = from.pop();
  to.push(step);
  const entry = sliceEntry(S, step.k);
  const target = redo ? step.after : step.before;
  entry.mask = target ? target.slice() : null;
  S.paintTick++;
  if (!entry.mask && !entry.version) { entry.dirty = false; entry.edits++; }
  else markDirty(S, entry);
  const [axis, index] = parseKey(step.k);
  const plane = PLANES.find((p) => S.views[p].layout.axis === axis);
  if (plane !== S.active) setActive(S, plane);
  if (S.cursor[axis] !== index) goTo(S, index, plane);
  say(`${redo ? 'Redone' : 'Undone'} on the ${plane} slice ${index}.`, 'info');
  refreshViews(S);
}

export function clearSlice(S) {
  const view = activeView(S);
  const k = key(view.layout.axis, indexOf(S, view));
  const entry = sliceEntry(S, k);
  if (!entry.mask && !entry.version) { say('This slice has no painting to clear.', 'info'); return; }
  const edit = beginEdit(S, k, entry);
  if (!edit) return;
  edit.mask.fill(0);
  S.paintTick++;
  commitEdit(S, edit);
  redrawAll(S);
}

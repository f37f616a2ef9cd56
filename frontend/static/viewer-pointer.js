/* The mouse on a plane: the left button paints, fills or moves the crosshair (Shift, or the crosshair tool);
 * a right or middle drag changes window and level; hovering shows the brush and the voxel under it. */

import { key } from './viewer-core.js';
import { indexOf } from './viewer-state.js';
import { sliceEntry } from './viewer-slices.js';
import { redraw, redrawAll, setActive } from './viewer-views.js';
import { screenPixel, inside, paintLine } from './viewer-brush.js';
import { beginEdit, commitEdit, floodFill } from './viewer-edits.js';
import { moveCursor } from './viewer-navigation.js';
import { setWindow } from './viewer-display.js';
import { showReadout } from './viewer-status.js';

export function onPointerDown(S, view, event) {
  if (!S.voxels) return;
  event.preventDefault();
  view.canvas.focus();
  setActive(S, view.plane);
  const [sx, sy] = screenPixel(view, event);
  if (event.button === 1 || event.button === 2) {          // right / middle drag: window and level
    S.wlDrag = { x: event.clientX, y: event.clientY, window: S.window, level: S.level };
    view.canvas.setPointerCapture(event.pointerId);
    return;
  }
  if (event.button !== 0 || !inside(view, sx, sy)) return;
  if (event.shiftKey || S.tool.kind === 'cross') {
    moveCursor(S, view, sx, sy);
    S.stroke = { view, cross: true };
    view.canvas.setPointerCapture(event.pointerId);
    return;
  }
  if (S.tool.kind === 'fill') { floodFill(S, view, sx, sy); return; }
  const k = key(view.layout.axis, indexOf(S, view));
  const edit = beginEdit(S, k, sliceEntry(S, k));
  if (!edit) return;
  S.paintTick++;
  S.stroke = { view, edit, last: [sx, sy] };
  paintLine(S, view, edit.mask, [sx, sy], [sx, sy]);
  view.canvas.setPointerCapture(event.pointerId);
  redrawAll(S);
}

export function onPointerMove(S, view, event) {
  if (!S.voxels) return;
  const [sx, sy] = screenPixel(view, event);
  if (S.wlDrag) {
    const span = Math.max(1e-6, S.autoWindow);
    const w = S.wlDrag.window + (event.clientX - S.wlDrag.x) * span / 200;
    const l = S.wlDrag.level - (event.clientY - S.wlDrag.y) * span / 200;
    setWindow(S, Math.max(span / 1000, w), l, 'manual');
    return;
  }
  S.hover = inside(view, sx, sy) ? { view, sx, sy } : null;
  if (S.stroke && S.stroke.cross && (event.buttons & 1)) {
    if (inside(view, sx, sy)) moveCursor(S, view, sx, sy);
  } else if (S.stroke && S.stroke.edit && (event.buttons & 1)) {
    paintLine(S, view, S.stroke.edit.mask, S.stroke.last, [sx, sy]);
    S.stroke.last = [sx, sy];
    redrawAll(S);
  } else {
    redraw(S, view);
  }
  showReadout(S);
}

export function onPointerUp(S) {
  if (S.wlDrag) { S.wlDrag = null; return; }
  if (!S.stroke) return;
  const { edit } = S.stroke;
  S.stroke = null;
  if (edit) commitEdit(S, edit);
}

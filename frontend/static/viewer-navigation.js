/* Moving through the volume: another slice of a plane, or the crosshair (the cursor voxel) moved by a
 * click. Leaving a slice saves what was painted on it; the page never waits for the server to move. */

import { $ } from './viewer-core.js';
import { PLANES, voxelAt } from './viewer-geometry.js';
import { indexOf, nSlices, anyDirty } from './viewer-state.js';
import { redraw, refreshViews } from './viewer-views.js';
import { saveAll } from './viewer-save.js';
import { updateSliceState, showReadout } from './viewer-status.js';
import { renderMarkers } from './viewer-suggestions.js';

export function goTo(S, index, plane = S.active) {
  const view = S.views[plane];
  if (!view) return;
  index = Math.max(0, Math.min(nSlices(S, view) - 1, index));
  if (index === indexOf(S, view)) return;
  S.cursor[view.layout.axis] = index;
  if (anyDirty(S)) saveAll(S);
  if (plane === S.active) { $('slice-slider').value = index; }
  redraw(S, view);
  PLANES.forEach((p) => p !== plane && redraw(S, S.views[p]));   // the crosshair moved in the other planes
  updateSliceState(S); renderMarkers(S); showReadout(S);
}

export function moveCursor(S, view, sx, sy) {
  const ijk = voxelAt(view.layout, indexOf(S, view), sx, sy);
  const changed = ijk.some((v, a) => v !== S.cursor[a]);
  S.cursor = ijk;
  if (changed && anyDirty(S)) saveAll(S);
  refreshViews(S);
}

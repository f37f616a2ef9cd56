/* What is said around the views: the active slice's state and the buttons it enables, the voxel readout,
 * and which plane the next retrain trains on. */

import { $, IGNORE, key, getJSON } from './viewer-core.js';
import { PLANES, voxelAt, screenOf, sliceOffset, worldPosition } from './viewer-geometry.js';
import { activeView, indexOf, nSlices } from './viewer-state.js';
import { sliceEntry, predictionOf } from './viewer-slices.js';
import { setSaveStatus } from './viewer-save.js';

export const PLANE_NAMES = { axial: 'Axial', coronal: 'Coronal', sagittal: 'Sagittal' };

export function updateSliceState(S) {
  const view = activeView(S);
  if (!view) return;
  const k = key(view.layout.axis, indexOf(S, view));
  const entry = sliceEntry(S, k);
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
  const canReview = S.predReady && !!predictionOf(S, k);
  $('accept').disabled = !canReview;
  $('reject').disabled = !canReview;
  const n = nSlices(S, view);
  $('slice-slider').max = n - 1;
  $('slice-slider').value = indexOf(S, view);
  $('slice-label').textContent = `${PLANE_NAMES[view.plane]} ${indexOf(S, view)} of 0–${n - 1}`;
  showReadout(S);
}

/** The voxel under the pointer (or the crosshair): index, position in mm, intensity and painted label. */
export function showReadout(S) {
  const h = S.hover;
  const view = h ? h.view : activeView(S);
  if (!view) return;
  const ijk = h ? voxelAt(view.layout, indexOf(S, view), h.sx, h.sy) : S.cursor;
  const shape = S.volume.shape;
  const q = S.voxels[(ijk[0] * shape[1] + ijk[1]) * shape[2] + ijk[2]];
  const value = S.offset + S.scale * q;
  const mm = worldPosition(S.volume.affine, ijk).map((c) => c.toFixed(1));
  const entry = sliceEntry(S, key(view.layout.axis, ijk[view.layout.axis]));
  const at = entry.mask ? entry.mask[sliceOffset(view.layout, shape, ...screenOf(view.layout, ijk))] : null;
  const label = at == null || at === IGNORE ? 'unpainted' : at === 0 ? 'background' :
    (S.labels.find((l) => l.value === at) || { name: String(at) }).name;
  $('readout').textContent = `voxel ${ijk.join(', ')} · ${mm.join(', ')} mm (RAS) · ` +
    `value ${+value.toPrecision(6)} · label ${label}`;
}

/** The trainer slices along one voxel axis (the one with most painted slices across the project): say which. */
export function showTrainingAxis(S) {
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

/** Painted slices per voxel axis in the project's other volumes (the trainer counts them too). */
export async function countOtherVolumes(S) {
  S.otherVolumeAxes = [0, 0, 0];
  for (const v of S.volumes) {
    if (v.id === S.volumeId) continue;
    try {
      for (const r of await getJSON(`/volumes/${v.id}/annotations`)) S.otherVolumeAxes[r.axis]++;
    } catch (err) { /* a volume removed meanwhile */ }
  }
}

/* slicewise viewer: three linked planes in radiological convention, pixel-exact painting in any of them.
 *
 * The whole volume is fetched once (GET /api/volumes/{id}/voxels, uint16 + offset/scale) and sliced, windowed
 * and drawn in the browser. Masks stay per stored slice: a Uint8Array of exactly np.take(volume, index, axis)
 * (rows = first remaining axis), saved as lossless 8-bit PNG with If-Match versions and read back raw, so
 * what is shown is what is stored. The plane layout (which voxel axes, which flips) comes from the affine.
 *
 * This module is the startup wiring: it makes the page's one state object, hands it to every control's
 * handler and opens the first volume. Each viewer-*.js module does one part and takes the state as an argument.
 */

import { $, say, getJSON } from './viewer-core.js';
import { PLANES } from './viewer-geometry.js';
import { encodeGreyPng } from './viewer-png.js';
import { createState, activeView, indexOf, anyDirty } from './viewer-state.js';
import { activePrediction } from './viewer-slices.js';
import { fitViews, redrawAll, refreshViews, setActive, setLayout } from './viewer-views.js';
import { goTo } from './viewer-navigation.js';
import { onPointerDown, onPointerMove, onPointerUp } from './viewer-pointer.js';
import { undoRedo, clearSlice } from './viewer-edits.js';
import { applyPreset, manualWindow, setLayer } from './viewer-display.js';
import { saveAll, resolveConflict } from './viewer-save.js';
import { PLANE_NAMES, updateSliceState } from './viewer-status.js';
import { loadSuggestions } from './viewer-suggestions.js';
import { review, deleteAnnotation } from './viewer-review.js';
import { openVolume, switchVolume, stepVolume } from './viewer-open.js';
import { onKey } from './viewer-keys.js';
import * as jobs from './viewer-jobs.js';

function wirePlanes(S) {
  for (const plane of PLANES) {
    const canvas = $('canvas-' + plane);
    const view = () => S.views[plane];
    canvas.addEventListener('pointerdown', (e) => view() && onPointerDown(S, view(), e));
    canvas.addEventListener('pointermove', (e) => view() && onPointerMove(S, view(), e));
    canvas.addEventListener('pointerup', () => onPointerUp(S));
    canvas.addEventListener('pointercancel', () => onPointerUp(S));
    canvas.addEventListener('pointerleave', () => { if (S.hover) { S.hover = null; redrawAll(S); } });
    canvas.addEventListener('contextmenu', (e) => e.preventDefault());
    canvas.addEventListener('dblclick', () => { setActive(S, plane); setLayout(S, S.layout === 'one' ? 'three' : 'one'); });
    $('view-' + plane).addEventListener('wheel', (e) => {
      if (!view()) return;
      e.preventDefault();
      setActive(S, plane);
      goTo(S, indexOf(S, view()) + (e.deltaY > 0 ? 1 : -1), plane);
    }, { passive: false });
    $('plane-' + plane).addEventListener('click', () => setActive(S, plane));
  }
  $('layout-three').addEventListener('click', () => setLayout(S, 'three'));
  $('layout-one').addEventListener('click', () => setLayout(S, 'one'));
  $('slice-slider').addEventListener('input', (e) => goTo(S, parseInt(e.target.value, 10)));
  $('prev-slice').addEventListener('click', () => goTo(S, indexOf(S, activeView(S)) - 1));
  $('next-slice').addEventListener('click', () => goTo(S, indexOf(S, activeView(S)) + 1));
}

function wireDisplayAndPaint(S) {
  $('wl-preset').addEventListener('change', (e) => applyPreset(S, e.target.value));
  $('window').addEventListener('change', () => manualWindow(S));
  $('level').addEventListener('change', () => manualWindow(S));
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
    redrawAll(S);
  });
  for (const layer of ['painted', 'predicted', 'outline', 'none']) {
    $('show-' + layer).addEventListener('change', (e) => { if (e.target.checked) setLayer(S, layer); });
  }
  $('undo').addEventListener('click', () => undoRedo(S, false));
  $('redo').addEventListener('click', () => undoRedo(S, true));
  $('clear-slice').addEventListener('click', () => clearSlice(S));
  $('delete-annotation').addEventListener('click', () => deleteAnnotation(S));
  $('save').addEventListener('click', async () => {
    if (!anyDirty(S)) { say('Nothing new to save.', 'info'); return; }
    if (await saveAll(S)) say(`Saved (${PLANE_NAMES[S.active]} slice ${indexOf(S, activeView(S))}).`, 'ok');
  });
  $('conflict-overwrite').addEventListener('click', () => resolveConflict(S, true));
  $('conflict-reload').addEventListener('click', () => resolveConflict(S, false));
}

function wirePanelsAndPage(S) {
  $('retrain').addEventListener('click', () => jobs.retrain(S));
  $('cancel-job').addEventListener('click', () => jobs.cancelJob(S));
  $('accept').addEventListener('click', () => review(S, 'accept'));
  $('reject').addEventListener('click', () => review(S, 'reject'));
  $('volume-picker').addEventListener('change', (e) => switchVolume(S, parseInt(e.target.value, 10)));
  $('prev-volume').addEventListener('click', () => stepVolume(S, -1));
  $('next-volume').addEventListener('click', () => stepVolume(S, 1));
  document.addEventListener('keydown', (e) => onKey(S, e));
  window.addEventListener('resize', () => fitViews(S));
  window.addEventListener('beforeunload', (e) => {
    if (!anyDirty(S)) return;
    // unsaved strokes: ask the browser to warn before leaving (the autosave runs 2.5 s after a stroke)
    e.preventDefault();
    e.returnValue = '';
  });
  // the job/model panel asks the views through these, so that it needs no import of them
  Object.assign(S.hooks, {
    saveAll: () => saveAll(S), anyDirty: () => anyDirty(S), setLayer: (layer) => setLayer(S, layer),
    refreshViews: () => refreshViews(S), updateSliceState: () => updateSliceState(S),
    loadSuggestions: () => loadSuggestions(S),
  });
}

/** The first volume to open: ?volume=ID, else the first volume of the first project that has one. */
async function firstVolumeId(params) {
  const volumeId = parseInt(params.get('volume'), 10);
  if (volumeId) return volumeId;
  for (const p of await getJSON('/projects')) {
    const vols = await getJSON(`/projects/${p.id}/volumes`);
    if (vols.length) return vols[0].id;
  }
  return null;
}

(async function main() {
  const S = createState();
  window.S = S;                                   // for tests and the browser console
  window.slicewiseEncodePng = encodeGreyPng;      // for tests
  Object.defineProperty(S, 'pred', { get: () => activePrediction(S), configurable: true });
  const params = new URLSearchParams(location.search);
  if (params.get('embed')) document.body.classList.add('embed');
  if (params.get('layout') === 'one') S.layout = 'one';
  wirePlanes(S);
  wireDisplayAndPaint(S);
  wirePanelsAndPage(S);
  try {
    const volumeId = await firstVolumeId(params);
    if (!volumeId) { say('No volume yet: create a project and upload a volume on the main page.', 'info'); return; }
    await openVolume(S, volumeId);
  } catch (err) {
    say('Could not open the volume: ' + err.message, 'error');
  }
})();

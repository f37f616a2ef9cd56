/* Opening a volume: its project, labels and sibling volumes, the whole voxel array once (with progress),
 * the saved annotations, the suggested plane, the models and any running retrain; switching volumes. */

import { $, say, api, getJSON } from './viewer-core.js';
import { PLANES } from './viewer-geometry.js';
import { anyDirty } from './viewer-state.js';
import { loadAnnotations } from './viewer-slices.js';
import { setupViews, refreshViews, setActive } from './viewer-views.js';
import { renderTools } from './viewer-tools.js';
import { applyPreset } from './viewer-display.js';
import { saveAll } from './viewer-save.js';
import { showReadout, showTrainingAxis, countOtherVolumes } from './viewer-status.js';
import { loadSuggestions } from './viewer-suggestions.js';
import * as jobs from './viewer-jobs.js';

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

function showVolumePicker(S, volumeId) {
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
}

export async function openVolume(S, volumeId) {
  const started = performance.now();
  jobs.stopFollowing(S);
  document.body.dataset.loaded = 'false';
  S.volumeId = volumeId;
  S.voxels = null;
  S.volume = await getJSON(`/volumes/${volumeId}`);
  S.project = await getJSON(`/projects/${S.volume.project_id}`);
  S.labels = S.project.labels;
  S.volumes = await getJSON(`/projects/${S.project.id}/volumes`);
  showVolumePicker(S, volumeId);
  renderTools(S);
  S.slices = new Map(); S.predCache = new Map(); S.undo = []; S.redo = []; S.conflict = null;
  $('conflict').hidden = true;
  const [data] = await Promise.all([loadVoxels(volumeId), loadAnnotations(S)]);
  Object.assign(S, { voxels: data.voxels, offset: data.offset, scale: data.scale,
    autoWindow: data.window, autoLevel: data.level });
  setupViews(S);
  applyPreset(S, S.preset === 'manual' ? 'auto' : S.preset);
  S.cursor = S.volume.shape.map((n) => Math.floor(n / 2));
  let axis = null;
  try { axis = (await getJSON(`/volumes/${volumeId}/suggestions?limit=5`)).axis; } catch (err) { /* default */ }
  const plane = PLANES.find((p) => S.views[p].layout.axis === axis) || 'axial';
  S.active = null;
  setActive(S, plane);
  await loadSuggestions(S);
  await countOtherVolumes(S);
  showTrainingAxis(S);
  await jobs.refreshModelsAndPrediction(S, false);
  await jobs.followRunningJob(S);
  refreshViews(S); showReadout(S);
  const url = new URL(location.href);
  url.searchParams.set('volume', volumeId);
  history.replaceState(null, '', url);
  say(`Opened ${S.volume.name || 'volume ' + volumeId} in ${((performance.now() - started) / 1000).toFixed(1)} s.`, 'ok');
  document.body.dataset.loaded = 'true';
}

/** Another volume of the project, after saving this one's strokes (it stays when they cannot be saved). */
export async function switchVolume(S, volumeId) {
  if (anyDirty(S) && !(await saveAll(S))) { $('volume-picker').value = String(S.volumeId); return; }
  openVolume(S, volumeId).catch((err) => say('Could not open the volume: ' + err.message, 'error'));
}

export function stepVolume(S, delta) {
  const at = S.volumes.findIndex((v) => v.id === S.volumeId);
  const next = S.volumes[at + delta];
  if (next) switchVolume(S, next.id);
}

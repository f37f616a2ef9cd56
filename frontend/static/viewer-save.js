/* Saving painted slices: each as a lossless 8-bit PNG, PUT with the version it was based on (If-Match), one
 * save after another; a 409 keeps the strokes and lets the user overwrite or load the other version. */

import { $, parseKey, say, api } from './viewer-core.js';
import { encodeGreyPng } from './viewer-png.js';
import { sliceShape } from './viewer-state.js';
import { sliceEntry, loadAnnotations } from './viewer-slices.js';
import { updateSliceState, showTrainingAxis } from './viewer-status.js';
import { renderMarkers } from './viewer-suggestions.js';

/** Save every unsaved slice, after any save already under way; resolves to whether all were saved. */
export function saveAll(S) {
  const saveDirty = () => saveEveryDirtySlice(S);
  S.saving = S.saving.then(saveDirty, saveDirty);
  return S.saving;
}

async function saveEveryDirtySlice(S) {
  let ok = true;
  for (const [k, entry] of S.slices) if (entry.dirty) ok = (await saveNow(S, k, entry)) && ok;
  return ok;
}

async function saveNow(S, k, entry, force = false) {
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
      const [rows, cols] = sliceShape(S, axis);
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
    updateSliceState(S); renderMarkers(S); showTrainingAxis(S);
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

export function setSaveStatus(text) { $('save-status').textContent = text; }

export async function resolveConflict(S, keepMine) {
  const k = S.conflict;
  if (!k) return;
  $('conflict').hidden = true;
  const entry = S.slices.get(k);
  if (keepMine) {
    entry.dirty = true;
    S.saving = S.saving.then(() => saveNow(S, k, entry, true));
    if (await S.saving) say('Your strokes were saved over the other version.', 'ok');
  } else {
    S.conflict = null;
    await loadAnnotations(S);
    S.slices.delete(k);
    sliceEntry(S, k);
    say('Loaded the version saved on the server.', 'info');
  }
}

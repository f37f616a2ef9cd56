/* Reviewing the slice on screen: accept the prediction as its annotation or reject it; or unpaint it. */

import { key, say, api } from './viewer-core.js';
import { activeView, indexOf } from './viewer-state.js';
import { sliceEntry } from './viewer-slices.js';
import { refreshViews } from './viewer-views.js';
import { setLayer } from './viewer-display.js';
import { saveAll } from './viewer-save.js';
import { showTrainingAxis } from './viewer-status.js';
import * as jobs from './viewer-jobs.js';

export async function review(S, decision) {
  if (!(await saveAll(S))) return;
  const view = activeView(S);
  const axis = view.layout.axis, index = indexOf(S, view), k = key(axis, index);
  const entry = sliceEntry(S, k);
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
      sliceEntry(S, k);
      say(`Slice ${index} accepted: the prediction is now its annotation (reviewed).`, 'ok');
      setLayer(S, 'painted');
      jobs.refreshModels(S);
    } else {
      say(`Slice ${index} rejected: paint the correct mask, or leave it for the next retrain.`, 'info');
    }
  } catch (err) {
    say((err.status === 409 ? 'Conflict: this slice changed on the server. ' : 'Review failed: ') + err.message, 'error');
  }
}

export async function deleteAnnotation(S) {
  const view = activeView(S);
  const axis = view.layout.axis, index = indexOf(S, view), k = key(axis, index);
  const entry = sliceEntry(S, k);
  if (!entry.version) return;
  try {
    await api(`/volumes/${S.volumeId}/annotations/${axis}/${index}`,
      { method: 'DELETE', headers: { 'If-Match': `"${entry.version}"` } });
    S.annotations.delete(k);
    S.slices.delete(k);
    say(`Slice ${index} is unpainted again.`, 'info');
    refreshViews(S); showTrainingAxis(S);
  } catch (err) { say('Could not remove the annotation: ' + err.message, 'error'); }
}

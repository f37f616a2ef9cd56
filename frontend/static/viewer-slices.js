/* Stored slices on the client: each painted mask (loaded raw on first sight, with its version) and the
 * active model's prediction of it, both exactly np.take(volume, index, axis). */

import { key, parseKey, say, api, getJSON } from './viewer-core.js';
import { activeView, indexOf } from './viewer-state.js';
import { refreshViews } from './viewer-views.js';

async function fetchRaw(path) {
  const response = await api(path);
  return { data: new Uint8Array(await response.arrayBuffer()), headers: response.headers };
}

/** The state of stored slice `k`: its mask (null = unpainted), version, and whether it is loaded. */
export function sliceEntry(S, k) {
  let entry = S.slices.get(k);
  if (!entry) {
    const row = S.annotations.get(k);
    entry = { mask: null, version: row ? row.version : 0, reviewed: row ? !!row.reviewed : false,
      dirty: false, edits: 0, state: row ? 'loading' : 'ready' };
    S.slices.set(k, entry);
    if (row) loadMask(S, k, entry);
  }
  return entry;
}

async function loadMask(S, k, entry) {
  const [axis, index] = parseKey(k);
  const volumeId = S.volumeId;
  try {
    const got = await fetchRaw(`/volumes/${volumeId}/annotations/${axis}/${index}?format=raw`);
    if (S.volumeId !== volumeId || S.slices.get(k) !== entry) return;
    entry.mask = got.data;
    S.paintTick++;
    entry.version = parseInt(got.headers.get('X-Annotation-Version'), 10);
    entry.reviewed = got.headers.get('X-Annotation-Reviewed') === 'true';
  } catch (err) {
    if (err.status !== 404) say('Could not load the painted slice: ' + err.message, 'error');
  }
  entry.state = 'ready';
  refreshViews(S);
}

/** The prediction of slice k: a Uint8Array, null (none), or undefined while it loads. */
export function predictionOf(S, k) {
  if (!S.predReady) return null;
  if (S.predCache.has(k)) return S.predCache.get(k);
  S.predCache.set(k, undefined);
  const [axis, index] = parseKey(k);
  const modelId = S.predModelId;
  fetchRaw(`/volumes/${S.volumeId}/prediction/slices/${axis}/${index}.png?format=raw`)
    .then((got) => got.data, () => null)
    .then((data) => { if (S.predModelId === modelId) { S.predCache.set(k, data); refreshViews(S); } });
  return undefined;
}

/** The prediction of the slice the active plane shows, or null (none, or still loading). */
export function activePrediction(S) {
  const view = activeView(S);
  if (!view || !S.predReady) return null;
  return predictionOf(S, key(view.layout.axis, indexOf(S, view))) || null;
}

/** The list of saved annotations of the open volume (versions and review flags; the masks load lazily). */
export async function loadAnnotations(S) {
  const rows = await getJSON(`/volumes/${S.volumeId}/annotations`);
  S.annotations = new Map(rows.map((r) => [key(r.axis, r.index), r]));
}

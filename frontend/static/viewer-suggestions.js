/* The slider's markers (painted, reviewed and suggested slices of the active plane's axis) and the
 * "Paint next" buttons of the slices the server suggests. */

import { $, getJSON } from './viewer-core.js';
import { activeView, nSlices } from './viewer-state.js';
import { goTo } from './viewer-navigation.js';

export async function loadSuggestions(S) {
  const view = activeView(S);
  try {
    const got = await getJSON(`/volumes/${S.volumeId}/suggestions?axis=${view.layout.axis}&limit=5`);
    S.suggestions = got.slices.map((s) => s.index);
  } catch (err) {
    S.suggestions = [];
  }
  renderMarkers(S);
}

export function renderMarkers(S) {
  const view = activeView(S);
  if (!view) return;
  const axis = view.layout.axis, n = nSlices(S, view);
  const box = $('slice-markers');
  box.textContent = '';
  const painted = [], reviewed = [];
  for (const r of S.annotations.values()) {
    if (r.axis !== axis) continue;
    (r.reviewed ? reviewed : painted).push(r.index);
  }
  painted.sort((a, b) => a - b); reviewed.sort((a, b) => a - b);
  const place = (index, cls, title) => {
    const m = document.createElement('div');
    m.className = 'marker ' + cls;
    m.style.left = (n > 1 ? (index / (n - 1)) * 100 : 0) + '%';
    m.title = title;
    box.appendChild(m);
  };
  S.suggestions.forEach((i) => place(i, 'suggested', `suggested: slice ${i}`));
  painted.forEach((i) => place(i, 'painted', `painted: slice ${i}`));
  reviewed.forEach((i) => place(i, 'reviewed', `reviewed: slice ${i}`));
  $('painted-list').textContent = 'Painted: ' + (painted.length ? painted.join(', ') : 'none');
  $('reviewed-list').textContent = reviewed.length ? 'Reviewed: ' + reviewed.join(', ') : '';
  const sugg = $('suggested-list');
  sugg.textContent = S.suggestions.length ? 'Paint next:' : '';
  S.suggestions.forEach((i) => {
    const b = document.createElement('button');
    b.type = 'button'; b.textContent = i; b.title = `go to suggested slice ${i}`;
    b.className = 'suggestion';
    b.addEventListener('click', () => goTo(S, i));
    sugg.appendChild(b);
  });
}

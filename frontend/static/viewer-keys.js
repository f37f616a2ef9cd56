/* Keyboard shortcuts (not while typing in a field): arrows / Page keys change slice, 1–9 pick a label,
 * [ ] brush size, E eraser, F fill, O overlay on/off, S save, Ctrl+Z / Ctrl+Shift+Z / Ctrl+Y undo and redo. */

import { $ } from './viewer-core.js';
import { activeView, indexOf } from './viewer-state.js';
import { redrawAll } from './viewer-views.js';
import { goTo } from './viewer-navigation.js';
import { undoRedo } from './viewer-edits.js';
import { selectTool, findTool } from './viewer-tools.js';
import { setLayer } from './viewer-display.js';

const SLICE_STEPS = { ArrowLeft: -1, ArrowDown: -1, PageDown: -10, ArrowRight: 1, ArrowUp: 1, PageUp: 10 };

export function onKey(S, e) {
  const tag = (e.target.tagName || '').toLowerCase();
  const typing = (tag === 'input' && !['range', 'radio', 'checkbox', 'button'].includes(e.target.type)) ||
    tag === 'textarea' || tag === 'select';
  if (typing || !S.voxels) return;
  const ctrl = e.ctrlKey || e.metaKey;
  const k = e.key;
  if (ctrl && k.toLowerCase() === 'z') { e.preventDefault(); undoRedo(S, e.shiftKey); return; }
  if (ctrl && k.toLowerCase() === 'y') { e.preventDefault(); undoRedo(S, true); return; }
  if (ctrl && k.toLowerCase() === 's') { e.preventDefault(); $('save').click(); return; }
  if (ctrl || e.altKey) return;
  const step = SLICE_STEPS[k];
  if (step) { e.preventDefault(); goTo(S, indexOf(S, activeView(S)) + step); return; }
  if (/^[1-9]$/.test(k)) {
    const tool = findTool(S, 'label', parseInt(k, 10));
    if (tool) selectTool(S, tool);
  } else if (k === '[' || k === ']') {
    S.brush = Math.max(1, Math.min(40, S.brush + (k === '[' ? -1 : 1)));
    $('brush-size').value = S.brush; $('brush-size-value').textContent = S.brush + ' px';
    redrawAll(S);
  } else if (k === 'e') selectTool(S, findTool(S, 'eraser'));
  else if (k === 'f') selectTool(S, findTool(S, 'fill'));
  else if (k === 'o') setLayer(S, S.layer === 'none' ? S.lastLayer : 'none');
  else if (k === 's') $('save').click();
  else return;
  e.preventDefault();
}

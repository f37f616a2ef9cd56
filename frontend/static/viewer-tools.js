/* The label panel: one brush per label of the project plus eraser, fill and crosshair, which tool is
 * selected, and which labels are shown. */

import { $ } from './viewer-core.js';
import { redrawAll } from './viewer-views.js';

const TOOL_TITLES = {
  eraser: 'Eraser: paints background (0); key E',
  fill: 'Fill: click fills the connected region within the tolerance with the last label; key F',
  cross: 'Crosshair: click or drag moves the other planes (also Shift+click with any tool)',
};

const toolId = (tool) => (tool.kind === 'label' ? `tool-label-${tool.value}` : `tool-${tool.kind}`);

/** The tool buttons and label checkboxes for the open project's labels; selects the first label. */
export function renderTools(S) {
  const box = $('tools');
  box.textContent = '';
  const tools = S.labels.map((l) => ({ kind: 'label', value: l.value, color: l.color, name: l.name }));
  tools.push({ kind: 'eraser', value: 0, color: '#ffffff', name: 'Eraser' });
  tools.push({ kind: 'fill', value: null, color: '#ffffff', name: 'Fill' });
  tools.push({ kind: 'cross', value: null, color: '#ffffff', name: 'Crosshair' });
  S.toolList = tools;
  for (const t of tools) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'tool';
    b.id = toolId(t);
    b.setAttribute('role', 'radio');
    b.title = t.kind === 'label' ? `Brush: label ${t.value} (${t.name}); key ${t.value}` : TOOL_TITLES[t.kind];
    const sw = document.createElement('span');
    sw.className = 'swatch ' + t.kind;
    if (t.kind === 'label') sw.style.background = t.color;
    b.append(sw, document.createTextNode(t.name));
    b.addEventListener('click', () => selectTool(S, t));
    box.appendChild(b);
  }
  renderLabelVisibility(S);
  S.lastLabel = tools[0];
  selectTool(S, tools[0]);
}

function renderLabelVisibility(S) {
  const vis = $('label-visibility');
  vis.textContent = '';
  for (const l of S.labels) {
    const lab = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox'; box.id = `visible-label-${l.value}`; box.checked = !S.hidden.has(l.value);
    box.addEventListener('change', () => {
      if (box.checked) S.hidden.delete(l.value); else S.hidden.add(l.value);
      redrawAll(S);
    });
    lab.append(box, document.createTextNode(' ' + l.name));
    vis.appendChild(lab);
  }
}

export function selectTool(S, tool) {
  S.tool = tool;
  if (tool.kind === 'label' || tool.kind === 'eraser') S.lastLabel = tool;
  const id = toolId(tool);
  for (const b of $('tools').children) b.setAttribute('aria-checked', b.id === id ? 'true' : 'false');
  document.body.dataset.tool = tool.kind;
  redrawAll(S);
}

/** The tool of kind `kind` (label tools also by `value`), or undefined. */
export function findTool(S, kind, value) {
  return S.toolList.find((t) => t.kind === kind && (kind !== 'label' || t.value === value));
}

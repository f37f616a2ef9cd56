/* How the slices are displayed: which mask is overlaid (painted, predicted, both, none) and the
 * window/level, typed, from a preset, or dragged. */

import { $, say } from './viewer-core.js';
import { redrawAll, refreshViews } from './viewer-views.js';

const PRESETS = {
  'ct-soft': [400, 40], 'ct-brain': [80, 40], 'ct-bone': [1800, 400], 'ct-lung': [1500, -600],
};

export function setLayer(S, layer) {
  if (layer !== 'none') S.lastLayer = layer;
  S.layer = layer;
  $('show-' + layer).checked = true;
  refreshViews(S);
}

export function setWindow(S, window, level, preset) {
  S.window = window; S.level = level; S.preset = preset;
  $('window').value = +window.toPrecision(5); $('level').value = +level.toPrecision(5);
  $('wl-preset').value = preset;
  redrawAll(S);
}

export function applyPreset(S, name) {
  if (name === 'auto') setWindow(S, S.autoWindow, S.autoLevel, name);
  // MR has no absolute units: a narrower window around the volume's own intensity range
  else if (name === 'brain-mr') setWindow(S, S.autoWindow * 0.8, S.autoLevel + S.autoWindow * 0.05, name);
  else if (PRESETS[name]) setWindow(S, PRESETS[name][0], PRESETS[name][1], name);
  else $('wl-preset').value = S.preset;
}

/** The window and level typed into their fields. */
export function manualWindow(S) {
  const w = parseFloat($('window').value), l = parseFloat($('level').value);
  if (!(w > 0) || !isFinite(l)) { say('Window must be a positive number and level a number.', 'error'); return; }
  setWindow(S, w, l, 'manual');
}

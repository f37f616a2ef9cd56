/* The brush: which screen pixel the pointer is over, the round footprint of the brush there (round in mm),
 * and stamping it into a slice's mask along a stroke. */

import { sliceOffset } from './viewer-geometry.js';

export function screenPixel(view, event) {
  const rect = view.canvas.getBoundingClientRect();
  const sx = Math.floor((event.clientX - rect.left) / rect.width * view.layout.width);
  const sy = Math.floor((event.clientY - rect.top) / rect.height * view.layout.height);
  return [sx, sy];
}

export const inside = (view, sx, sy) => sx >= 0 && sy >= 0 && sx < view.layout.width && sy < view.layout.height;

/** Screen pixels under a round brush of S.brush voxels (of the finer in-plane spacing), round in mm. */
export function footprint(S, view, sx0, sy0) {
  const { pixelWidth: pw, pixelHeight: ph } = view.layout;
  const unit = Math.min(pw, ph);
  const rad = (S.brush - 1) / 2 * unit;
  const limit = rad * rad + 0.25 * unit * unit;
  const nx = Math.ceil(rad / pw), ny = Math.ceil(rad / ph);
  const out = [];
  for (let dy = -ny; dy <= ny; dy++) {
    for (let dx = -nx; dx <= nx; dx++) {
      if ((dx * pw) ** 2 + (dy * ph) ** 2 > limit) continue;
      if (inside(view, sx0 + dx, sy0 + dy)) out.push([sx0 + dx, sy0 + dy]);
    }
  }
  return out;
}

function stamp(S, view, mask, sx, sy) {
  const value = S.tool.kind === 'label' ? S.tool.value : 0;
  const shape = S.volume.shape;
  for (const [x, y] of footprint(S, view, sx, sy)) mask[sliceOffset(view.layout, shape, x, y)] = value;
}

/** The brush stamped at every screen pixel from a to b, so a fast stroke leaves no gaps. */
export function paintLine(S, view, mask, a, b) {
  S.paintTick++;
  const steps = Math.max(Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]), 1);
  for (let s = 0; s <= steps; s++) {
    stamp(S, view, mask, Math.round(a[0] + (b[0] - a[0]) * s / steps), Math.round(a[1] + (b[1] - a[1]) * s / steps));
  }
}

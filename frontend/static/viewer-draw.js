/* Drawing one plane: grey voxels through a window/level table, the painted mask or the prediction (filled or
 * as an outline) blended on top, then the crosshair and the exact brush footprint. All in the browser. */

import { hexToRgb } from './viewer-core.js';
import { voxelX, voxelY, sliceSteps } from './viewer-geometry.js';

/** grey = clip(round((v - (level - window / 2)) / window * 255)), v = offset + scale * q (as the server's PNGs);
 * window, level, offset and scale are the viewer state's, and so is the table, kept until one of them changes. */
export function greyTable(S) {
  const lut = S.greyLut;
  const k = [S.window, S.level, S.offset, S.scale].join();
  if (k === lut.key) return lut.table;
  const low = S.level - S.window / 2;
  for (let q = 0; q < 65536; q++) {
    const g = Math.round((S.offset + S.scale * q - low) / S.window * 255);
    lut.table[q] = g < 0 ? 0 : g > 255 ? 255 : g;
  }
  lut.key = k;
  return lut.table;
}

function labelColours(S) {
  const table = new Array(256).fill(null);
  for (const l of S.labels) if (!S.hidden.has(l.value)) table[l.value] = hexToRgb(l.color);
  return table;
}

/** Flat offset into the voxel array of screen pixel (0, 0) of a plane's slice, and the steps right / down. */
function voxelWalk(layout, index, shape) {
  const strides = [shape[1] * shape[2], shape[2], 1];
  const x0 = voxelX(layout, 0), y0 = voxelY(layout, 0);
  return {
    start: index * strides[layout.axis] + x0 * strides[layout.xAxis] + y0 * strides[layout.yAxis],
    x: (layout.flipX ? -1 : 1) * strides[layout.xAxis],
    y: (layout.flipY ? -1 : 1) * strides[layout.yAxis],
  };
}

function maskWalk(layout, shape) {
  const steps = sliceSteps(layout, shape);
  const x0 = voxelX(layout, 0), y0 = voxelY(layout, 0);
  return { start: x0 * steps.x + y0 * steps.y, x: (layout.flipX ? -1 : 1) * steps.x, y: (layout.flipY ? -1 : 1) * steps.y };
}

function isEdge(mask, walk, sx, sy, w, h, value) {
  const at = walk.start + sx * walk.x + sy * walk.y;
  return (sx === 0 || mask[at - walk.x] !== value) || (sx === w - 1 || mask[at + walk.x] !== value) ||
    (sy === 0 || mask[at - walk.y] !== value) || (sy === h - 1 || mask[at + walk.y] !== value);
}

/** Fill view.image (width x height RGBA) with the plane's slice of the state's volume and its overlays. */
export function paintImage(S, view, index, fill, outline) {
  const { layout } = view;
  const w = layout.width, h = layout.height, shape = S.volume.shape;
  const table = greyTable(S);
  const px = new Uint32Array(view.image.data.buffer);
  const vw = voxelWalk(layout, index, shape);
  const vox = S.voxels;
  for (let sy = 0; sy < h; sy++) {
    let at = vw.start + sy * vw.y, o = sy * w;
    for (let sx = 0; sx < w; sx++, at += vw.x, o++) {
      const g = table[vox[at]];
      px[o] = 0xff000000 | (g << 16) | (g << 8) | g;
    }
  }
  const colours = labelColours(S);
  const mw = maskWalk(layout, shape);
  const bytes = view.image.data;
  if (fill && S.opacity > 0) {
    const a = S.opacity;
    for (let sy = 0; sy < h; sy++) {
      let m = mw.start + sy * mw.y, o = sy * w * 4;
      for (let sx = 0; sx < w; sx++, m += mw.x, o += 4) {
        const c = colours[fill[m]];
        if (!c) continue;
        bytes[o] += (c[0] - bytes[o]) * a; bytes[o + 1] += (c[1] - bytes[o + 1]) * a; bytes[o + 2] += (c[2] - bytes[o + 2]) * a;
      }
    }
  }
  if (outline) {
    for (let sy = 0; sy < h; sy++) {
      let m = mw.start + sy * mw.y, o = sy * w * 4;
      for (let sx = 0; sx < w; sx++, m += mw.x, o += 4) {
        const v = outline[m], c = colours[v];
        if (!c || v === 0 || !isEdge(outline, mw, sx, sy, w, h, v)) continue;
        bytes[o] = c[0]; bytes[o + 1] = c[1]; bytes[o + 2] = c[2];
      }
    }
  }
}

/** The image scaled to the canvas (each voxel a spacing-shaped block), crosshair, brush footprint. */
export function present(view, fresh, cross, footprint, footprintColour) {
  const { layout, canvas, ctx } = view;
  if (fresh) view.offCtx.putImageData(view.image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(view.off, 0, 0, canvas.width, canvas.height);
  const kx = canvas.width / layout.width, ky = canvas.height / layout.height;
  if (cross) {
    ctx.strokeStyle = 'rgba(80, 220, 255, 0.75)';
    ctx.lineWidth = 1;
    ctx.beginPath();
    const x = Math.round((cross[0] + 0.5) * kx) + 0.5, y = Math.round((cross[1] + 0.5) * ky) + 0.5;
    ctx.moveTo(x, 0); ctx.lineTo(x, canvas.height);
    ctx.moveTo(0, y); ctx.lineTo(canvas.width, y);
    ctx.stroke();
  }
  if (footprint && footprint.length) {
    ctx.fillStyle = footprintColour;
    ctx.globalAlpha = 0.45;
    for (const [sx, sy] of footprint) ctx.fillRect(sx * kx, sy * ky, Math.ceil(kx), Math.ceil(ky));
    ctx.globalAlpha = 1;
  }
}

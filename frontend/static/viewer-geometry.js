/* Which voxel axes a plane shows, and how, in radiological convention, from the volume's affine.
 *
 * World coordinates are RAS+ (x to the patient's Right, y Anterior, z Superior). Radiological convention:
 *   axial    screen right = patient Left, screen down = Posterior   (anterior up, patient's right on the left)
 *   coronal  screen right = patient Left, screen down = Inferior
 *   sagittal screen right = Posterior,    screen down = Inferior    (anterior on the left)
 * Each voxel axis is matched to the world axis it points along most (an oblique series keeps its own
 * acquisition planes: nothing is resampled), so a plane is a stored slice np.take(volume, index, axis) shown
 * transposed and/or flipped, each voxel drawn spacing-sized.
 */

export const PLANES = ['axial', 'coronal', 'sagittal'];
const NORMAL_WORLD_AXIS = { axial: 2, coronal: 1, sagittal: 0 };
const SCREEN_RIGHT = { axial: [-1, 0, 0], coronal: [-1, 0, 0], sagittal: [0, -1, 0] };
const SCREEN_DOWN = { axial: [0, -1, 0], coronal: [0, 0, -1], sagittal: [0, 0, -1] };
const LETTERS = [['R', 'L'], ['A', 'P'], ['S', 'I']];

const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];

/** Unit direction (RAS) of voxel axis `axis` of a 4x4 affine given as nested rows. */
export function axisDirection(affine, axis) {
  const v = [affine[0][axis], affine[1][axis], affine[2][axis]];
  const n = Math.hypot(v[0], v[1], v[2]) || 1;
  return v.map((x) => x / n);
}

/** worldOf[v]: the world axis (0 = x, 1 = y, 2 = z) voxel axis v points along most; a permutation. */
export function worldAxisOfVoxelAxes(affine) {
  const dirs = [0, 1, 2].map((v) => axisDirection(affine, v));
  const perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
  let best = perms[0], bestScore = -1;
  for (const p of perms) {
    const score = Math.abs(dirs[0][p[0]]) + Math.abs(dirs[1][p[1]]) + Math.abs(dirs[2][p[2]]);
    if (score > bestScore + 1e-9) { best = p; bestScore = score; }
  }
  return best;
}

/** The letter of the patient side a unit RAS direction points to most. */
export function sideLetter(direction) {
  let axis = 0;
  for (let a = 1; a < 3; a++) if (Math.abs(direction[a]) > Math.abs(direction[axis])) axis = a;
  return LETTERS[axis][direction[axis] >= 0 ? 0 : 1];
}

/** How `plane` is drawn for a volume {shape, spacing, affine}:
 *  axis (the slice normal, a voxel axis), xAxis/yAxis (voxel axes along screen right/down), flipX/flipY,
 *  width/height (voxels), pixelWidth/pixelHeight (mm), rowsAxis/colsAxis of np.take's 2D slice, letters. */
export function planeLayout(volume, plane) {
  const worldOf = worldAxisOfVoxelAxes(volume.affine);
  const voxelOf = [0, 0, 0];
  worldOf.forEach((w, v) => { voxelOf[w] = v; });
  const right = SCREEN_RIGHT[plane], down = SCREEN_DOWN[plane];
  const axis = voxelOf[NORMAL_WORLD_AXIS[plane]];
  const xAxis = voxelOf[right.findIndex((c) => c !== 0)];
  const yAxis = voxelOf[down.findIndex((c) => c !== 0)];
  const flipX = dot(axisDirection(volume.affine, xAxis), right) < 0;
  const flipY = dot(axisDirection(volume.affine, yAxis), down) < 0;
  const [rowsAxis, colsAxis] = [0, 1, 2].filter((a) => a !== axis);
  const rightDir = axisDirection(volume.affine, xAxis).map((c) => (flipX ? -c : c));
  const downDir = axisDirection(volume.affine, yAxis).map((c) => (flipY ? -c : c));
  return {
    plane, axis, xAxis, yAxis, flipX, flipY, rowsAxis, colsAxis,
    width: volume.shape[xAxis], height: volume.shape[yAxis],
    pixelWidth: volume.spacing[xAxis], pixelHeight: volume.spacing[yAxis],
    letters: {
      right: sideLetter(rightDir), left: sideLetter(rightDir.map((c) => -c)),
      bottom: sideLetter(downDir), top: sideLetter(downDir.map((c) => -c)),
    },
  };
}

/** Voxel index along xAxis / yAxis of screen pixel column sx / row sy (and back: the map is its own inverse). */
export const voxelX = (layout, sx) => (layout.flipX ? layout.width - 1 - sx : sx);
export const voxelY = (layout, sy) => (layout.flipY ? layout.height - 1 - sy : sy);

/** Voxel (i, j, k) under screen pixel (sx, sy) of the plane's slice `index`. */
export function voxelAt(layout, index, sx, sy) {
  const ijk = [0, 0, 0];
  ijk[layout.axis] = index;
  ijk[layout.xAxis] = voxelX(layout, sx);
  ijk[layout.yAxis] = voxelY(layout, sy);
  return ijk;
}

/** Screen pixel (sx, sy) of voxel ijk in this plane. */
export function screenOf(layout, ijk) {
  return [voxelX(layout, ijk[layout.xAxis]), voxelY(layout, ijk[layout.yAxis])];
}

/** Offsets into the flat np.take(volume, index, axis) slice (C order) for one screen step right / down. */
export function sliceSteps(layout, shape) {
  const cols = shape[layout.colsAxis];
  const stride = (a) => (a === layout.rowsAxis ? cols : 1);
  return { x: stride(layout.xAxis), y: stride(layout.yAxis) };
}

/** Index into the flat slice of the voxel under screen pixel (sx, sy). */
export function sliceOffset(layout, shape, sx, sy) {
  const s = sliceSteps(layout, shape);
  return voxelX(layout, sx) * s.x + voxelY(layout, sy) * s.y;
}

/** World position (mm, RAS) of voxel ijk. */
export function worldPosition(affine, ijk) {
  return [0, 1, 2].map((r) => affine[r][0] * ijk[0] + affine[r][1] * ijk[1] + affine[r][2] * ijk[2] + affine[r][3]);
}

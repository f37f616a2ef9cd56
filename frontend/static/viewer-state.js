/* The viewer's state: one plain object, made once at startup (viewer.js) and passed to every function that
 * reads or changes it, plus the small questions asked of it everywhere. No module keeps state of its own. */

/** Everything the page knows; `hooks` lets the job/model panel ask the views to redraw or reload. */
export const createState = () => ({
  volumeId: null, volume: null, project: null, labels: [], volumes: [],
  voxels: null, offset: 0, scale: 1, autoWindow: 1, autoLevel: 0,
  views: {}, active: 'axial', layout: 'three', cursor: [0, 0, 0],
  preset: 'auto', window: 1, level: 0, greyLut: { key: '', table: new Uint8Array(65536) },
  slices: new Map(), annotations: new Map(), otherVolumeAxes: [0, 0, 0],
  undo: [], redo: [], saving: Promise.resolve(), autosaveTimer: null, conflict: null,
  predCache: new Map(), predModelId: null, predReady: false, predStatus: null, predictionPoll: null,
  layer: 'painted', lastLayer: 'painted', opacity: 0.5, hidden: new Set(),
  tool: null, toolList: [], lastLabel: null, brush: 3, tolerance: 50,
  suggestions: [], models: [], job: null, events: null, pollTimer: null,
  stageLabels: {}, losses: { jobId: null, points: [] },
  stroke: null, hover: null, wlDrag: null, hooks: {}, paintTick: 0, drawnAt: 0,
});

export const activeView = (S) => S.views[S.active];
/** The slice index a view shows: the cursor's coordinate along its normal axis. */
export const indexOf = (S, view) => S.cursor[view.layout.axis];
export const sliceShape = (S, axis) => S.volume.shape.filter((_, a) => a !== axis);
export const nSlices = (S, view) => S.volume.shape[view.layout.axis];
export const anyDirty = (S) => [...S.slices.values()].some((e) => e.dirty);
export const isPaintTool = (S) => S.tool && (S.tool.kind === 'label' || S.tool.kind === 'eraser');

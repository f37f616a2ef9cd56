/* Retrain with live progress and the loss curve, model versions and rollback, prediction state, downloads.
 * Every function takes the viewer state `S` it reads and updates (made once by viewer.js); the module keeps none. */

import { $, API, api, getJSON, say, fmtSeconds } from './viewer-core.js';

const SVG = 'http://www.w3.org/2000/svg';

// S.stageLabels: stage name -> what the progress bar says; the server's own list (GET /api/info), read once
async function loadStageLabels(S) {
  if (Object.keys(S.stageLabels).length) return;
  try {
    for (const stage of (await getJSON('/info')).stages) S.stageLabels[stage.name] = stage.label;
  } catch (err) { /* the raw stage names are shown instead */ }
}

export function showJob(S, job, event) {
  S.job = job;
  const pct = Math.round((job.progress || 0) * 100);
  $('progress').setAttribute('aria-valuenow', String(pct));
  $('progress-fill').style.width = pct + '%';
  document.body.dataset.jobState = job.state;
  const stage = S.stageLabels[job.stage] || job.stage || '';
  const parts = [];
  if (job.state === 'queued') parts.push('Queued — waiting for the worker');
  else if (job.state === 'running') {
    parts.push(`${pct}%`);
    if (stage) parts.push(stage);
    if (job.epoch != null && job.stage !== 'predict') parts.push(`epoch ${job.epoch}`);
    if (job.eta_s != null && job.eta_s > 0) parts.push(`about ${fmtSeconds(job.eta_s)} left`);
  } else if (job.state === 'succeeded') parts.push('Finished');
  else if (job.state === 'cancelled') parts.push('Cancelled: the previous model stays active');
  else if (job.state === 'failed') parts.push('Retrain failed');
  const mode = modeLabel(job);
  let text = `Job ${job.id}` + (mode ? ` (${mode})` : '') + ': ' + parts.join(' · ');
  const redundant = job.state === 'running' && /^training:/.test(job.message || '');  // stage + epoch say it
  if (job.message && job.state !== 'failed' && !redundant) text += (job.state === 'running' ? ' — ' : ': ') + job.message;
  $('progress-text').textContent = text;
  const active = job.state === 'queued' || job.state === 'running';
  $('retrain').disabled = active;
  $('cancel-job').disabled = !active;
  const errorBox = $('job-error');
  if (job.state === 'failed') {
    errorBox.textContent = 'The retrain failed: ' + (job.error || job.message || 'no reason given') +
      '. Your annotations are kept; the previous model stays active.';
    errorBox.hidden = false;
  } else { errorBox.hidden = true; }
  recordLoss(S, job, event);
}

// what the job does: the worker decides "refresh" or "full" when it starts ("auto" until then)
function modeLabel(job) {
  if (job.mode === 'refresh') return job.from_model_id != null ? `Refresh: fine-tune from model ${job.from_model_id}` : 'Refresh';
  if (job.mode === 'full') return job.global_stage === 'reused' ? 'Full retrain, global stage reused' : 'Full retrain';
  if (job.mode === 'auto') return 'Auto';
  return '';
}

function recordLoss(S, job, event) {
  const losses = S.losses;
  if (losses.jobId !== job.id) { losses.jobId = job.id; losses.points = []; }
  if (event && typeof event.loss === 'number' && isFinite(event.loss)) {
    losses.points.push({ stage: event.stage || job.stage || '', loss: event.loss });
    drawLossCurve(S);
  }
}

/** The training loss of the running job, one line per stage (each stage scaled to its own range). */
function drawLossCurve(S) {
  const losses = S.losses;
  const box = $('loss-curve');
  box.hidden = losses.points.length < 2;
  const svg = $('loss-svg');
  svg.textContent = '';
  const w = 260, h = 70;
  const stages = [...new Set(losses.points.map((p) => p.stage))];
  const n = losses.points.length;
  stages.forEach((stage, s) => {
    const pts = losses.points.map((p, i) => [i, p]).filter(([, p]) => p.stage === stage);
    const values = pts.map(([, p]) => p.loss);
    const lo = Math.min(...values), hi = Math.max(...values);
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', pts.map(([i, p]) =>
      `${(i / Math.max(1, n - 1) * w).toFixed(1)},${(h - 4 - (hi > lo ? (p.loss - lo) / (hi - lo) : 0.5) * (h - 8)).toFixed(1)}`).join(' '));
    line.setAttribute('class', 'loss-line stage-' + s);
    svg.appendChild(line);
  });
  const last = losses.points[n - 1];
  $('loss-text').textContent = `loss ${last.loss.toPrecision(3)} (${S.stageLabels[last.stage] || last.stage}), ${n} points`;
}

export function stopFollowing(S) {
  if (S.events) { S.events.close(); S.events = null; }
  clearTimeout(S.pollTimer);
}

export function follow(S, jobId) {
  stopFollowing(S);
  const es = new EventSource(`${API}/jobs/${jobId}/events`);
  S.events = es;
  es.addEventListener('progress', (e) => { const d = JSON.parse(e.data); showJob(S, d, d.event); });
  es.addEventListener('retry', (e) => {
    const d = JSON.parse(e.data);
    say('Out of memory: retrying with a smaller setting. ' + (d.message || ''), 'info');
  });
  es.addEventListener('end', (e) => { stopFollowing(S); finished(S, JSON.parse(e.data)); });
  es.onerror = () => {      // stream broke (server restart, proxy): fall back to polling
    if (S.events !== es) return;
    es.close(); S.events = null;
    poll(S, jobId);
  };
}

async function poll(S, jobId) {
  try {
    const job = await getJSON(`/jobs/${jobId}`);
    if (['succeeded', 'failed', 'cancelled'].includes(job.state)) { finished(S, job); return; }
    showJob(S, job);
  } catch (err) { say('Lost track of the retrain: ' + err.message, 'error'); }
  S.pollTimer = setTimeout(() => poll(S, jobId), 2000);
}

async function finished(S, job) {
  showJob(S, job);
  if (job.state === 'succeeded') say('Retrain finished: predictions are ready to review.', 'ok');
  else if (job.state === 'failed') say('Retrain failed — see the message under the progress bar.', 'error');
  else say('Retrain cancelled.', 'info');
  await refreshModelsAndPrediction(S, job.state === 'succeeded');
}

export async function retrain(S) {
  if (!(await S.hooks.saveAll())) return;   // train on what is on screen, never lose the last strokes
  const preset = $('preset').value;
  const body = { mode: $('retrain-mode').value };
  if (preset) body.preset = preset;
  try {
    const response = await api(`/projects/${S.project.id}/train`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
    const job = await response.json();
    showJob(S, job);
    say(job.coalesced ? 'A retrain was already queued: your request joined it.' : 'Retrain started.', 'info');
    follow(S, job.id);
  } catch (err) {
    say('Could not start the retrain: ' + err.message, 'error');
  }
}

export async function cancelJob(S) {
  if (!S.job) return;
  try {
    showJob(S, await (await api(`/jobs/${S.job.id}/cancel`, { method: 'POST' })).json());
  } catch (err) { say('Could not cancel: ' + err.message, 'error'); }
}

export async function followRunningJob(S) {
  await loadStageLabels(S);
  try {
    const jobs = await getJSON(`/projects/${S.project.id}/jobs`);
    const last = jobs[jobs.length - 1];
    if (last) {
      showJob(S, last);
      if (last.state === 'queued' || last.state === 'running') follow(S, last.id);
    }
  } catch (err) { /* older server without the jobs list */ }
}

function modelScore(m) {
  const v = (m.metrics || {}).validation || {};
  const scores = [];
  if (typeof v.dice_mean === 'number') {
    const per = Array.isArray(v.dice_per_class) ? ' (' + v.dice_per_class.map((d) => d.toFixed(2)).join(' / ') + ')' : '';
    scores.push(`validation Dice ${v.dice_mean.toFixed(3)}${per}`);
  }
  const q = m.prequential || {};
  if (typeof q.dice === 'number') {
    scores.push(`Dice ${q.dice.toFixed(3)} on ${q.slices} slice${q.slices === 1 ? '' : 's'} painted after it`);
  } else if (q.saved) {
    scores.push(`${q.saved} slice${q.saved === 1 ? '' : 's'} saved after it, none with the structure yet`);
  }
  return scores.length ? scores.join('; ') : 'no score yet: paint or accept a slice it has not seen';
}

function renderModels(S) {
  const list = $('models');
  list.textContent = '';
  if (!S.models.length) {
    const li = document.createElement('li');
    li.className = 'muted'; li.textContent = 'No model yet: paint a few slices and press Retrain.';
    list.appendChild(li);
    return;
  }
  for (const m of [...S.models].reverse()) {
    const li = document.createElement('li');
    li.id = `model-${m.id}`;
    li.value = m.id;
    if (m.active) li.className = 'active';
    const when = (m.created || '').replace('T', ' ').slice(0, 16);
    li.append(document.createTextNode(`Model ${m.id}${m.active ? ' (active)' : ''} — ${modelScore(m)}; ` +
      `${m.annotated_slices} painted slices; ${when}`));
    if (!m.active) {
      const b = document.createElement('button');
      b.type = 'button'; b.id = `activate-${m.id}`;
      b.textContent = 'Use this version';
      b.title = `Roll back / switch to model ${m.id}`;
      b.addEventListener('click', () => activate(S, m.id));
      li.appendChild(b);
    }
    list.appendChild(li);
  }
}

async function activate(S, modelId) {
  try {
    await api(`/projects/${S.project.id}/models/${modelId}/activate`, { method: 'POST' });
    say(`Model ${modelId} is now active.`, 'ok');
    await refreshModelsAndPrediction(S, true);
  } catch (err) { say('Could not switch model: ' + err.message, 'error'); }
}

function setDownloads(S) {
  const ready = S.predReady;
  const set = (id, href) => {
    const a = $(id);
    if (ready) { a.href = href; a.classList.remove('disabled'); a.removeAttribute('aria-disabled'); a.setAttribute('download', ''); }
    else { a.removeAttribute('href'); a.classList.add('disabled'); a.setAttribute('aria-disabled', 'true'); }
  };
  set('download-nifti', `${API}/volumes/${S.volumeId}/prediction.nii.gz`);
  set('download-dicom', `${API}/volumes/${S.volumeId}/prediction.dcm`);
  set('download-zip', `${API}/projects/${S.project.id}/predictions.zip`);
  $('download-dicom-item').hidden = !(S.volume && S.volume.source === 'dicom');
}

/** The model versions list again (its scores change as slices are saved or accepted). */
export async function refreshModels(S) {
  try {
    S.models = await getJSON(`/projects/${S.project.id}/models`);
    renderModels(S);
  } catch (err) { /* the list on screen stays */ }
}

export async function refreshModelsAndPrediction(S, showPrediction = false) {
  clearTimeout(S.predictionPoll);
  try {
    S.models = await getJSON(`/projects/${S.project.id}/models`);
    renderModels(S);
    const st = await getJSON(`/volumes/${S.volumeId}/prediction`);
    S.predStatus = st;
    const wasReady = S.predReady && S.predModelId === st.model_id;
    S.predReady = st.status === 'ready';
    S.predModelId = st.model_id;
    const text = {
      none: 'No prediction yet: paint a few slices and press Retrain.',
      pending: `Model ${st.model_id} is predicting this volume…`,
      ready: `Prediction of model ${st.model_id} is shown under “Predicted”.`,
    }[st.status] || `Prediction: ${st.status}`;
    $('prediction-status').textContent = text;
    document.body.dataset.ready = String(S.predReady);
    setDownloads(S);
    if (st.status === 'pending') S.predictionPoll = setTimeout(() => refreshModelsAndPrediction(S, showPrediction), 2000);
    if (S.predReady && !wasReady) {
      S.predCache.clear();
      await S.hooks.loadSuggestions();
      if (showPrediction && !S.hooks.anyDirty()) S.hooks.setLayer('predicted');
      S.hooks.refreshViews();
    }
    S.hooks.updateSliceState();
  } catch (err) { say('Could not load models / prediction: ' + err.message, 'error'); }
}

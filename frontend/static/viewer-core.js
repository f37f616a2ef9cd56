/* What every viewer module shares and none changes: the slice key, the message line and the one fetch helper
 * (every request to /api goes through `api`). The state object itself is in viewer-state.js. */

export const IGNORE = 255;
export const API = '/api';
export const $ = (id) => document.getElementById(id);
export const key = (axis, index) => axis + ':' + index;
export const parseKey = (k) => k.split(':').map((n) => parseInt(n, 10));

export function say(text, kind = 'info') {
  const el = $('message');
  el.textContent = text;
  el.title = text;
  el.className = 'message ' + kind;
}

function cookie(name) {
  const found = document.cookie.split(';').map((c) => c.trim()).find((c) => c.startsWith(name + '='));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : null;
}

const SAFE_METHODS = ['GET', 'HEAD', 'OPTIONS'];

export async function api(path, options = {}) {
  const method = (options.method || 'GET').toUpperCase();
  const headers = new Headers(options.headers || {});
  const csrf = cookie('slicewise_csrf');
  if (csrf && !SAFE_METHODS.includes(method)) headers.set('X-CSRF-Token', csrf);
  let response;
  try {
    response = await fetch(API + path, { ...options, headers });
  } catch (err) {
    throw Object.assign(new Error('cannot reach the slicewise server (' + err.message + ')'), { status: 0 });
  }
  if (response.status === 401 && !path.startsWith('/login')) {
    // authentication is on and the login cookie is missing or expired: log in, then come back here
    location.href = '/login?next=' + encodeURIComponent(location.pathname + location.search);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw Object.assign(new Error(typeof detail === 'string' ? detail : JSON.stringify(detail)),
      { status: response.status });
  }
  return response;
}

export const getJSON = async (path) => (await api(path)).json();

export function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

export function fmtSeconds(s) {
  if (s == null) return '';
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + ' s';
  const m = Math.floor(s / 60);
  return m < 60 ? m + ' min ' + (s % 60) + ' s' : Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
}

// The /login page: posts name and password to /api/login, then goes back to ?next= (same site only).
'use strict';
const params = new URLSearchParams(location.search);
// only same-site paths: never redirect to another origin
const next = (params.get('next') || '/ui').startsWith('/') && !(params.get('next') || '').startsWith('//')
  ? (params.get('next') || '/ui') : '/ui';
const message = document.getElementById('message');
const say = (text, kind) => { message.textContent = text; message.className = kind; };

fetch('/api/me').then((r) => (r.ok ? r.json() : null)).then((me) => {
  if (!me) return;
  if (!me.auth) { say('This server needs no login (no users configured).', 'ok'); return; }
  say('Logged in as ' + me.name + ' (' + me.role + ').', 'ok');
  document.getElementById('logout').hidden = false;
}).catch(() => {});

document.getElementById('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  say('Logging in…', '');
  try {
    const response = await fetch('/api/login', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, credentials: 'same-origin',
      body: JSON.stringify({ name: document.getElementById('name').value,
                             password: document.getElementById('password').value }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { say(body.detail || response.statusText, 'error'); return; }
    location.href = next;
  } catch (err) {
    say('cannot reach the slicewise server (' + err.message + ')', 'error');
  }
});

document.getElementById('logout').addEventListener('click', async () => {
  const csrf = document.cookie.split('; ').find((c) => c.startsWith('slicewise_csrf='));
  await fetch('/api/logout', { method: 'POST', credentials: 'same-origin',
    headers: csrf ? { 'X-CSRF-Token': csrf.slice('slicewise_csrf='.length) } : {} });
  document.getElementById('logout').hidden = true;
  say('Logged out.', 'ok');
});

// The console's shell: reads /config.json (auth "off" or "jwt"), asks for a token when needed,
// shows who is signed in, and routes #/<page>[/<id>] to the page modules under views/.

import { UNAUTHORIZED_EVENT, clearToken, getToken, setToken } from './api.js';
import { field, h, replace } from './dom.js';
import { roleFromClaim, setRole } from './roles.js';
import * as overview from './views/overview.js';
import * as policies from './views/policies.js';
import * as signals from './views/signals.js';
import * as actions from './views/actions.js';
import * as silences from './views/silences.js';
import * as tasks from './views/tasks.js';
import * as audit from './views/audit.js';

const PAGES = { overview, policies, signals, actions, silences, tasks, audit };

const main = document.getElementById('main');
const who = document.getElementById('who');
let authMode = 'off';
let cleanup = null;

/** The payload of a JWT, decoded client-side only to show its name and roles: the signature
 * is the API's to check, so nothing here trusts it. */
function jwtPayload(token) {
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function showWho() {
  if (authMode === 'off') {
    setRole('admin');
    replace(who, h('span', { testid: 'who-name' }, 'Authentication off'),
      h('span', { class: 'badge', testid: 'who-role' }, 'admin'));
    return;
  }
  const payload = jwtPayload(getToken()) || {};
  const role = roleFromClaim(payload.roles);
  setRole(role);
  const roles = Array.isArray(payload.roles) ? payload.roles.join(', ') : String(payload.roles || 'none');
  replace(who,
    h('span', { testid: 'who-name', title: `roles claim: ${roles}` }, String(payload.name || payload.sub || 'unknown')),
    h('span', { class: 'badge', testid: 'who-role' }, role || 'no role'),
    h('button', { type: 'button', testid: 'sign-out', 'aria-label': 'Sign out (forget the token)', onclick: signOut }, 'Sign out'));
}

function signOut() {
  clearToken();
  showLogin('Signed out.');
}

/** The token prompt: paste a bearer token; it is kept in sessionStorage only. */
function showLogin(message) {
  if (cleanup) cleanup();
  cleanup = null;
  replace(who);
  const input = h('textarea', { name: 'token', rows: 5, required: true, autocomplete: 'off', spellcheck: 'false', testid: 'login-token' });
  const problem = h('p', { class: 'field-error', testid: 'login-error', role: 'alert', hidden: !message });
  problem.textContent = message || '';
  const form = h('form', { class: 'login', testid: 'login-form', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Sign in'),
    h('p', {}, 'Paste a bearer token (JWT). It is kept in this tab only (sessionStorage) and sent to the API with each call.'),
    problem,
    field('Bearer token', input, { errorFor: 'token' }),
    h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary', testid: 'login-submit' }, 'Use token')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const token = input.value.trim().replace(/^Bearer\s+/i, '');
    const payload = jwtPayload(token);
    if (!payload) {
      problem.textContent = 'This is not a JWT (three dot-separated parts with a JSON payload).';
      problem.hidden = false;
      input.focus();
      return;
    }
    setToken(token);
    route();
  });
  replace(main, form);
  input.focus();
}

function setCurrentNav(page) {
  for (const link of document.querySelectorAll('nav a')) {
    if (link.getAttribute('href') === `#/${page}`) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

/** Renders the page the hash names; each page returns a function that stops its timers and
 * streams, called before the next page renders. */
function route() {
  if (authMode === 'jwt' && !getToken()) {
    showLogin('');
    return;
  }
  showWho();
  const [, page = 'overview', ...rest] = (location.hash || '#/overview').split('/');
  const view = PAGES[page] ? page : 'overview';
  const id = rest.length ? decodeURIComponent(rest.join('/')) : '';
  if (cleanup) cleanup();
  cleanup = null;
  setCurrentNav(view);
  main.replaceChildren();
  document.title = `TAI console — ${view}`;
  try {
    cleanup = PAGES[view].render(main, id) || null;
  } catch (err) {
    replace(main, h('div', { class: 'error', role: 'alert' }, `This page failed: ${err.message}`));
  }
}

async function start() {
  try {
    const response = await fetch('/config.json', { headers: { Accept: 'application/json' } });
    const config = await response.json();
    authMode = config.auth === 'jwt' ? 'jwt' : 'off';
  } catch {
    // Without the server's word, ask for a token: the API says whether it needs one.
    authMode = 'jwt';
  }
  window.addEventListener('hashchange', () => {
    route();
    main.focus();
  });
  // The skip link's #main would be read as a route by the hash router: it moves the focus only.
  document.querySelector('[data-testid="skip-link"]').addEventListener('click', (event) => {
    event.preventDefault();
    main.focus();
  });
  window.addEventListener(UNAUTHORIZED_EVENT, (event) => {
    // Once a refused token is forgotten, the page's calls still under way come back 401 for
    // having no token: the first refusal is the one that says why.
    if (authMode !== 'jwt' || !getToken()) return;
    clearToken();
    showLogin(`${event.detail} — the API refused this token. Paste another one.`);
  });
  route();
}

start();

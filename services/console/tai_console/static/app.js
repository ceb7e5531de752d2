// The console's shell: reads /config.json (auth "off" or "jwt"), asks for a token when needed,
// shows who is signed in, keeps the namespace picker, and routes
// #/<page>[/<id>][?namespace=<name>] to the page modules under views/.

import {
  DEFAULT_NAMESPACE, UNAUTHORIZED_EVENT, api, clearToken, getNamespace, getToken, isNamespaceName,
  setNamespace, setToken, storedNamespace,
} from './api.js';
import { field, h, replace } from './dom.js';
import { roleInNamespace, setRole } from './roles.js';
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
const namespaceSelect = document.getElementById('namespace-select');
let authMode = 'off';
// The claim of a token that maps namespaces to roles (the API's TAI_JWT_NAMESPACES_CLAIM).
let namespacesClaim = 'tai_namespaces';
let cleanup = null;
// The namespaces the picker offers, and the token they were listed with (listed again when it
// changes: another token may hold roles in other namespaces).
let namespaceNames = [];
let namespaceListing = null;
// Whether a namespace was chosen (in the picker, by a link, or on a former visit): if not, the
// console may move to the first namespace the token holds a role in.
let namespaceChosen = false;

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
  // The role in the namespace shown: another namespace may grant another one, or none.
  const role = roleInNamespace(payload, getNamespace(), namespacesClaim);
  setRole(role);
  const roles = Array.isArray(payload.roles) ? payload.roles.join(', ') : String(payload.roles || 'none');
  const namespaces = payload[namespacesClaim] && typeof payload[namespacesClaim] === 'object'
    ? `; ${namespacesClaim} claim: ${JSON.stringify(payload[namespacesClaim])}` : '';
  replace(who,
    h('span', { testid: 'who-name', title: `roles claim: ${roles}${namespaces}` }, String(payload.name || payload.sub || 'unknown')),
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

// ---------------------------------------------------------------- namespaces

/** The route and the namespace of a hash: #/policies/abc?namespace=team-a ->
 * {path: '/policies/abc', namespace: 'team-a'} (namespace '' when the hash names none). */
function parseHash(hash) {
  const text = (hash || '').replace(/^#/, '');
  const mark = text.indexOf('?');
  const path = mark >= 0 ? text.slice(0, mark) : text;
  const params = new URLSearchParams(mark >= 0 ? text.slice(mark + 1) : '');
  return { path: path || '/overview', namespace: params.get('namespace') || '' };
}

function hashOf(path, namespace) {
  return `#${path}?namespace=${encodeURIComponent(namespace)}`;
}

/**
 * Takes the namespace the hash names (a link someone shared), or the one the history entry was
 * shown in (Back and Forward), or else (the navigation's and the pages' own links) keeps the
 * current one and writes it into the hash, so the address always opens the namespace shown.
 * "default" is left out of the address until it is chosen in the picker: the console's
 * addresses from before namespaces stay as they were. Each entry is stamped with its namespace.
 */
function namespaceFromHash() {
  const { path, namespace } = parseHash(location.hash);
  const entry = history.state && history.state.namespace;
  let adopt = '';
  if (namespace && isNamespaceName(namespace)) adopt = namespace;
  else if (!namespace && isNamespaceName(entry)) adopt = entry;
  if (adopt) {
    if (adopt !== getNamespace()) setNamespace(adopt);
    namespaceChosen = true;
  }
  const current = getNamespace();
  // Unless it named a namespace taken, the address shows the current one ("default" only if
  // it named another: a name the API would refuse).
  let url = location.hash;
  if (!(namespace && adopt) && (namespace || current !== DEFAULT_NAMESPACE)) url = hashOf(path, current);
  history.replaceState({ namespace: current }, '', url);
  showNamespaceChoice();
  return path;
}

/** The picker's options: the namespaces listed, "default" when none could be, and the current
 * namespace if it is not among them (named by a link, or remembered). */
function showNamespaceChoice() {
  const current = getNamespace();
  const names = namespaceNames.length ? [...namespaceNames] : [DEFAULT_NAMESPACE];
  if (!names.includes(current)) names.push(current);
  const options = names.map((name) => h('option', { value: name }, name));
  const same = namespaceSelect.options.length === options.length
    && options.every((option, i) => namespaceSelect.options[i].value === option.value);
  if (!same) replace(namespaceSelect, options);
  namespaceSelect.value = current;
}

/**
 * Lists the namespaces the caller holds a role in (GET /v1/namespaces) for the picker, once per
 * token. Returns the listing: {token, done, promise}. A failed call leaves "default" (the page's
 * own calls say what is wrong); another try comes with the next token, or the next load.
 */
function listNamespaces() {
  const token = getToken();
  if (namespaceListing && namespaceListing.token === token) return namespaceListing;
  const listing = { token, done: false, promise: null };
  namespaceListing = listing;
  listing.promise = (async () => {
    try {
      const result = await api('GET', '/v1/namespaces');
      const listed = (result.namespaces || [])
        .filter((n) => n.state !== 'NAMESPACE_STATE_DELETING')
        .map((n) => n.name)
        .filter(isNamespaceName);
      namespaceNames = [...new Set(listed)].sort((a, b) => (a === DEFAULT_NAMESPACE ? -1 : b === DEFAULT_NAMESPACE ? 1 : a.localeCompare(b)));
    } catch {
      namespaceNames = [];
    }
    listing.done = true;
    // A token refused meanwhile (the sign-in form says why) or replaced: nothing to show.
    if (listing !== namespaceListing || getToken() !== token) return;
    // Opened without a namespace of its own (none in the address, none remembered) on a token
    // that holds no role in "default": the first namespace it does hold.
    if (!namespaceChosen && namespaceNames.length && !namespaceNames.includes(getNamespace())) {
      chooseNamespace(namespaceNames[0], { push: false });
      return;
    }
    showNamespaceChoice();
  })();
  return listing;
}

/** Switches every call to `name` and shows the current section's list again in it (an id of
 * another namespace would not be found there). The address changes with a new history entry
 * (unless `push` is false), so Back returns to the namespace before. */
function chooseNamespace(name, { push = true } = {}) {
  if (!isNamespaceName(name)) return;
  setNamespace(name);
  namespaceChosen = true;
  const [, page = 'overview'] = parseHash(location.hash).path.split('/');
  const hash = hashOf(`/${PAGES[page] ? page : 'overview'}`, name);
  if (push) history.pushState({ namespace: name }, '', hash);
  else history.replaceState({ namespace: name }, '', hash);
  route();
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
  const path = namespaceFromHash();
  showWho();
  const listing = listNamespaces();
  const [, page = 'overview', ...rest] = path.split('/');
  const view = PAGES[page] ? page : 'overview';
  const id = rest.length ? decodeURIComponent(rest.join('/')) : '';
  if (cleanup) cleanup();
  cleanup = null;
  setCurrentNav(view);
  main.replaceChildren();
  document.title = `TAI console — ${view}`;
  if (!namespaceChosen && !listing.done) {
    // No namespace chosen yet: the first one the token holds may not be "default", whose calls
    // would only be refused. The page follows the listing.
    main.append(h('p', { class: 'muted', testid: 'namespaces-loading' }, 'Loading your namespaces…'));
    listing.promise.then(() => {
      if (!namespaceChosen && listing === namespaceListing && getToken() === listing.token) route();
    });
    return;
  }
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
    if (typeof config.namespaces_claim === 'string' && config.namespaces_claim) namespacesClaim = config.namespaces_claim;
  } catch {
    // Without the server's word, ask for a token: the API says whether it needs one.
    authMode = 'jwt';
  }
  // A namespace named by the address wins over the one remembered from the last visit.
  const named = parseHash(location.hash).namespace;
  const remembered = storedNamespace();
  namespaceChosen = isNamespaceName(named) || Boolean(remembered);
  setNamespace(isNamespaceName(named) ? named : remembered || DEFAULT_NAMESPACE, { remember: namespaceChosen });
  // Changing the namespace keeps the focus on the picker (a keyboard user may go on choosing).
  namespaceSelect.addEventListener('change', () => chooseNamespace(namespaceSelect.value));
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

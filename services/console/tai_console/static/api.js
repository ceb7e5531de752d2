// The API client: JSON over the gateway's transcoded routes (same origin), the bearer token,
// the namespace every call works in, errors as ApiError (google.rpc.Status bodies), and a
// reader for server streams (newline-delimited JSON) that reconnects by itself.

const TOKEN_KEY = 'tai.token';

// The token lives in sessionStorage only: gone when the tab closes, never in localStorage or a
// cookie.
export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token.trim());
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// The namespace every call works in, sent as this header (the gRPC metadata of the same name
// behind the gateway). Kept in localStorage, so the console opens where it was left: unlike
// the token, a namespace's name is no secret.
export const NAMESPACE_HEADER = 'x-tai-namespace';
export const DEFAULT_NAMESPACE = 'default';
const NAMESPACE_KEY = 'tai.namespace';
// tai_rpc.namespace_name_problem's rule: a DNS label of at most 40 characters, no "--".
const NAMESPACE_NAME = /^[a-z](?:[a-z0-9]|-(?=[a-z0-9])){0,39}$/;
let namespace = DEFAULT_NAMESPACE;

/** Whether `name` is a namespace name (the API refuses any other). */
export function isNamespaceName(name) {
  return typeof name === 'string' && NAMESPACE_NAME.test(name);
}

/** The namespace the calls work in. */
export function getNamespace() {
  return namespace;
}

/** Sets the namespace of the calls from now on and, unless `remember` is false, remembers it
 * for the next visit. */
export function setNamespace(name, { remember = true } = {}) {
  namespace = isNamespaceName(name) ? name : DEFAULT_NAMESPACE;
  if (!remember) return;
  try {
    localStorage.setItem(NAMESPACE_KEY, namespace);
  } catch {
    // Storage refused (a private window's quota): the choice lasts for this page only.
  }
}

/** The namespace remembered from the last visit ('' when none, or not a name). */
export function storedNamespace() {
  let stored = '';
  try {
    stored = localStorage.getItem(NAMESPACE_KEY) || '';
  } catch {
    stored = '';
  }
  return isNamespaceName(stored) ? stored : '';
}

/** Fired on `window` when the API answers 401: app.js asks for another token. */
export const UNAUTHORIZED_EVENT = 'tai:unauthorized';

/** An API error: HTTP status, gRPC code, message, and the BadRequest field violations. */
export class ApiError extends Error {
  constructor(status, body) {
    const message = (body && body.message) || `HTTP ${status}`;
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = body && typeof body.code === 'number' ? body.code : null;
    this.details = (body && body.details) || [];
    this.fieldViolations = fieldViolationsOf(body);
  }
}

/** The field violations of a google.rpc.Status body: from its BadRequest details, or, when it
 * has none, from a message of the form "field: reason". */
function fieldViolationsOf(body) {
  const found = [];
  for (const detail of (body && body.details) || []) {
    const list = detail.field_violations || detail.fieldViolations || [];
    for (const v of list) found.push({ field: v.field || '', description: v.description || '' });
  }
  if (!found.length && body && typeof body.message === 'string') {
    const match = /^([a-z_][a-z0-9_.[\]]*): (.+)$/s.exec(body.message);
    if (match) found.push({ field: match[1], description: match[2] });
  }
  return found;
}

/** The query string of an object: arrays repeat the key; undefined, null and '' are left out. */
export function queryString(query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    if (Array.isArray(value)) {
      for (const item of value) if (item !== '' && item !== undefined && item !== null) params.append(key, String(item));
    } else if (value !== undefined && value !== null && value !== '') {
      params.append(key, String(value));
    }
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

function headers(hasBody) {
  const result = { Accept: 'application/json' };
  if (hasBody) result['Content-Type'] = 'application/json';
  const token = getToken();
  if (token) result.Authorization = `Bearer ${token}`;
  result[NAMESPACE_HEADER] = namespace;
  return result;
}

async function errorOf(response) {
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // Not a google.rpc.Status (e.g. the gateway's own 401 or 503 answer): keep its text, but
    // not an HTML page's markup.
    const plain = text.trim();
    const fallback = `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''}`;
    body = { message: plain && !plain.startsWith('<') ? plain : fallback };
  }
  if (response.status === 401) {
    body.message = `Token refused (401): ${body.message}`;
    window.dispatchEvent(new CustomEvent(UNAUTHORIZED_EVENT, { detail: body.message }));
  }
  return new ApiError(response.status, body);
}

/**
 * Calls one route: `api('GET', '/v1/policies', {query})`, `api('POST', path, {body})`.
 * Resolves with the parsed JSON; rejects with ApiError (never swallowed here).
 */
export async function api(method, path, { query, body, signal } = {}) {
  const hasBody = body !== undefined;
  let response;
  try {
    response = await fetch(path + queryString(query), {
      method,
      headers: headers(hasBody),
      body: hasBody ? JSON.stringify(body) : undefined,
      signal,
      credentials: 'same-origin',
    });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, { message: `The API could not be reached: ${err.message}` });
  }
  if (!response.ok) throw await errorOf(response);
  const text = await response.text();
  return text ? JSON.parse(text) : {};
}

/** A new idempotency key for state-changing calls that take a request_id. */
export function requestId() {
  return crypto.randomUUID();
}

/**
 * Follows a server stream (newline-delimited JSON, one message a line) and reconnects by
 * itself with exponential backoff (1 s doubling to 30 s, reset once a message arrives).
 *
 * `query()` is called before each connection, so a caller can resume from what it has seen
 * (e.g. `from_revision`). `onMessage(obj)` gets each message; `onState(state, detail)` gets
 * "connecting" | "open" | "retrying" (detail: {error, delayMs}) | "stopped" (detail: error).
 * A 401 or 403 stops it: reconnecting would not help. Returns a function that stops it.
 */
export function followStream(path, { query = () => ({}), onMessage, onState = () => {} }) {
  let stopped = false;
  let controller = null;
  let timer = null;
  let delay = 1000;

  async function connect() {
    if (stopped) return;
    controller = new AbortController();
    onState('connecting');
    try {
      const response = await fetch(path + queryString(query()), {
        headers: headers(false),
        signal: controller.signal,
        credentials: 'same-origin',
      });
      if (!response.ok) throw await errorOf(response);
      onState('open');
      await readLines(response.body, (line) => {
        delay = 1000;
        onMessage(JSON.parse(line));
      });
      throw new Error('the stream ended');
    } catch (err) {
      if (stopped) return;
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
        stopped = true;
        onState('stopped', err);
        return;
      }
      const wait = delay;
      delay = Math.min(delay * 2, 30000);
      onState('retrying', { error: err, delayMs: wait });
      timer = setTimeout(connect, wait);
    }
  }

  connect();
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (controller) controller.abort();
  };
}

// The transcoder writes one JSON object per line; a chunk may end mid-line, so the tail is
// kept for the next one. Hand-written: the browser has no NDJSON reader.
async function readLines(stream, onLine) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (line) onLine(line);
    }
  }
  const rest = (buffered + decoder.decode()).trim();
  if (rest) onLine(rest);
}

/** Fetches every page of a list route (at most `maxPages`), concatenating `key`. */
export async function listAll(path, key, { query = {}, maxPages = 5, pageSize = 500 } = {}) {
  const items = [];
  let pageToken = '';
  for (let page = 0; page < maxPages; page += 1) {
    const result = await api('GET', path, { query: { ...query, page_size: pageSize, page_token: pageToken } });
    items.push(...(result[key] || []));
    pageToken = result.next_page_token || '';
    if (!pageToken) return { items, complete: true };
  }
  return { items, complete: false };
}

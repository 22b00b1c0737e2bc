/**
 * The dashboard's only way to the API. The page was opened as `/ui/?token=...` or from loopback
 * (which needs no token, contract 4): a token given in the address is kept in sessionStorage (for
 * this tab only) and taken out of the address bar, so it is neither bookmarked nor shown. Fetches
 * send it as `Authorization: Bearer`; EventSource cannot send headers, so streams carry
 * `?token=`, which the API accepts on GET requests.
 */
const TOKEN_KEY = 'ferry-token';

function takeToken() {
  const url = new URL(window.location.href);
  const given = url.searchParams.get('token');
  if (given !== null) {
    sessionStorage.setItem(TOKEN_KEY, given);
    url.searchParams.delete('token');
    window.history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const token = takeToken();

/** An API error, with the API's stable code and its message (which says what to do). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the API; resolves with the parsed JSON body (null for 204), rejects with ApiError. */
export async function call(method, path, body) {
  const headers = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  if (response.status === 204) return null;
  const text = await response.text();
  const json = text === '' ? null : JSON.parse(text);
  if (!response.ok) {
    const error = json?.error ?? {};
    throw new ApiError(
      response.status,
      error.code ?? 'ERR_HTTP',
      error.message ?? `${method} ${path}: HTTP ${response.status}`,
    );
  }
  return json;
}

/** GET that answers null on 404: for routes a Ferry without some feature does not serve. */
export async function getOptional(path) {
  try {
    return await call('GET', path);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

/** An EventSource on `path`, with the token in its address when the page has one. */
export function openEvents(path) {
  const url = new URL(path, window.location.href);
  if (token !== null) url.searchParams.set('token', token);
  return new EventSource(url);
}

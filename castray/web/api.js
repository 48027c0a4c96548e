// REST calls to the CastRay server, with the optional API token kept in localStorage.

const TOKEN_KEY = "castray-token";

export class ApiError extends Error {}

export function token() {
  return localStorage.getItem(TOKEN_KEY);
}

function authHeaders() {
  const saved = token();
  return saved ? { Authorization: "Bearer " + saved } : {};
}

/**
 * The server said 401 to a call made with ``used``: true when there is a token to try now.
 * Only one prompt at a time (prompt blocks); calls that failed meanwhile reuse its answer.
 */
export function tokenAfter401(used) {
  if (token() !== used) return true;
  const given = window.prompt(
    used ? "That token was refused. The CastRay API token:" : "This CastRay server needs its API token:");
  if (!given) return false;
  localStorage.setItem(TOKEN_KEY, given.trim());
  return true;
}

async function detailOf(response) {
  const body = await response.json().catch(() => null);
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  return `the server answered HTTP ${response.status}`;
}

/** JSON in, JSON out; a failed call throws ApiError with the server's own explanation. */
export async function api(method, path, body) {
  const used = token();
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError("the CastRay server does not answer; is it still running?");
  }
  if (response.status === 401 && tokenAfter401(used)) return api(method, path, body);
  if (!response.ok) throw new ApiError(await detailOf(response));
  return response.status === 204 ? null : response.json();
}

/** Multipart upload with progress (fetch cannot report upload progress; XHR can). */
export function upload(file, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", "/api/upload");
    for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    request.onload = () => {
      let body = null;
      try { body = JSON.parse(request.responseText); } catch { /* not JSON */ }
      if (request.status >= 200 && request.status < 300) resolve(body);
      else reject(new ApiError((body && body.detail) || `the upload failed: HTTP ${request.status}`));
    };
    request.onerror = () => reject(new ApiError("the upload was cut off; is the server still running?"));
    const form = new FormData();
    form.append("file", file);
    request.send(form);
  });
}

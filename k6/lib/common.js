// Shared by the k6 scripts: environment parsing with bounds, the loopback-only
// target check, request headers and payloads. k6 has no SSE client; the
// subscribers come from `herald-bench` (see k6/README.md).

import http from 'k6/http';
import exec from 'k6/execution';

/** Upper bounds that keep every run finite and on this machine's scale. */
export const MAX_DURATION_SECS = 3600;
export const MAX_RATE = 50000;
export const MAX_ITERATIONS = 5000000;

/** The server under test, without a trailing slash. */
export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');

/** Reads an integer from the environment, refusing values outside [min, max]. */
export function intEnv(name, fallback, min, max) {
  const raw = __ENV[name];
  const value = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new Error(`${name}=${raw} must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** Reads a duration such as `30s`, `5m` or `1h` and returns whole seconds. */
export function durationEnv(name, fallback) {
  const raw = __ENV[name] || fallback;
  const m = /^(\d+)(s|m|h)$/.exec(raw);
  if (!m) {
    throw new Error(`${name}=${raw} must look like 30s, 5m or 1h`);
  }
  const secs = Number(m[1]) * { s: 1, m: 60, h: 3600 }[m[2]];
  if (secs < 1 || secs > MAX_DURATION_SECS) {
    throw new Error(`${name}=${raw} must be between 1s and ${MAX_DURATION_SECS}s`);
  }
  return secs;
}

/**
 * Checks that a constant-arrival-rate plan stays under MAX_ITERATIONS; the
 * executor starts at most rate x duration iterations, so this bounds the run.
 */
export function boundedIterations(rate, secs) {
  const iterations = rate * secs;
  if (iterations > MAX_ITERATIONS) {
    throw new Error(
      `rate ${rate}/s for ${secs}s is ${iterations} iterations; the limit is ${MAX_ITERATIONS}`,
    );
  }
  return iterations;
}

/**
 * The host of an http(s) URL when it is a loopback address (127.0.0.0/8,
 * localhost or [::1]), otherwise null. User info (`user@host`) is refused, so
 * that `http://127.0.0.1@example.com` cannot pass for loopback.
 */
export function loopbackHost(url) {
  const m = /^https?:\/\/([^/?#]*)(?:[/?#].*)?$/i.exec(url);
  if (!m || m[1].includes('@')) {
    return null;
  }
  const authority = m[1].toLowerCase();
  const hp = /^(\[[0-9a-f:.]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(authority);
  if (!hp) {
    return null;
  }
  const host = hp[1];
  if (host === 'localhost' || host === '[::1]') {
    return host;
  }
  const v4 = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (v4 && v4.slice(1).every((o) => Number(o) <= 255)) {
    return host;
  }
  return null;
}

/**
 * For setup(): aborts the whole test unless BASE_URL is loopback and the
 * server answers /readyz. Returns the server's readiness body.
 */
export function requireLoopbackServer() {
  if (loopbackHost(BASE_URL) === null) {
    exec.test.abort(
      `BASE_URL=${BASE_URL} is not loopback: these scripts only target 127.0.0.0/8, localhost or [::1]`,
    );
  }
  const res = http.get(`${BASE_URL}/readyz`, { tags: { name: 'GET /readyz' }, timeout: '5s' });
  if (res.status !== 200) {
    exec.test.abort(`${BASE_URL}/readyz answered ${res.status}: start herald first`);
  }
  return res.json();
}

/** Headers of a publish request; HERALD_TOKEN becomes a bearer token. */
export function publishHeaders() {
  const headers = { 'Content-Type': 'application/json' };
  if (__ENV.HERALD_TOKEN) {
    headers.Authorization = `Bearer ${__ENV.HERALD_TOKEN}`;
  }
  return headers;
}

/** The channel of iteration `i`: round-robin over `count` channels. */
export function channelName(prefix, i, count) {
  return `${prefix}-${i % count}`;
}

/** One event body: the send time (ms since the epoch) first, then padding. */
export function eventData(seq, padBytes) {
  return { sent_ms: Date.now(), seq, pad: 'x'.repeat(padBytes) };
}

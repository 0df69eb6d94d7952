// Shared by the k6 scripts: environment parsing with bounds, the target
// check (loopback unless ALLOW_REMOTE=1), request headers, payloads and the
// end-of-test summary (text on stdout, JSON in a file), and the delivery
// counters of the subscriber scripts.

import http from 'k6/http';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';

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

/** `ALLOW_REMOTE=1`: the explicit opt-in to load a non-loopback Herald. */
export const ALLOW_REMOTE = __ENV.ALLOW_REMOTE === '1';

/**
 * Why `url` may not be loaded, or null when it may: loopback always, any
 * other host only with ALLOW_REMOTE=1.
 */
export function targetRefusal(url) {
  if (loopbackHost(url) !== null) {
    return null;
  }
  if (!/^https?:\/\/[^/?#@]+(?:[/?#].*)?$/i.test(url)) {
    return `BASE_URL=${url} is not an http(s) URL without user info`;
  }
  if (ALLOW_REMOTE) {
    return null;
  }
  return (
    `BASE_URL=${url} is not loopback: these scripts target 127.0.0.0/8, localhost or [::1] ` +
    'unless ALLOW_REMOTE=1 is set to load a deployed Herald on purpose'
  );
}

/**
 * For setup(): aborts the whole test, before a single request, unless
 * BASE_URL may be loaded (see targetRefusal) and the server answers /readyz.
 * Returns the server's readiness body.
 */
export function requireServer() {
  const refusal = targetRefusal(BASE_URL);
  if (refusal !== null) {
    exec.test.abort(refusal);
  }
  if (loopbackHost(BASE_URL) === null) {
    console.warn(`ALLOW_REMOTE=1: loading ${BASE_URL}, which is not loopback`);
  }
  const res = http.get(`${BASE_URL}/readyz`, {
    tags: { name: 'GET /readyz' },
    timeout: '5s',
    headers: authHeaders(),
  });
  if (res.status !== 200) {
    exec.test.abort(`${BASE_URL}/readyz answered ${res.status}: start herald first`);
  }
  return res.json();
}

/** `Authorization: Bearer $HERALD_TOKEN`, when the token is set. */
export function authHeaders() {
  return __ENV.HERALD_TOKEN ? { Authorization: `Bearer ${__ENV.HERALD_TOKEN}` } : {};
}

/** Headers of a publish request; HERALD_TOKEN becomes a bearer token. */
export function publishHeaders() {
  return Object.assign({ 'Content-Type': 'application/json' }, authHeaders());
}

/** The channel of iteration `i`: round-robin over `count` channels. */
export function channelName(prefix, i, count) {
  return `${prefix}-${i % count}`;
}

/** One event body: the send time (ms since the epoch) first, then padding. */
export function eventData(seq, padBytes) {
  return { sent_ms: Date.now(), seq, pad: 'x'.repeat(padBytes) };
}

/** A random hex string, to keep one run's channels apart from another's. */
export function runId() {
  let out = '';
  for (let i = 0; i < 8; i++) {
    out += Math.floor(Math.random() * 16).toString(16);
  }
  return out;
}

function formatValues(metric) {
  const v = metric.values;
  switch (metric.type) {
    case 'counter':
      return `${v.count}`;
    case 'rate':
      return `${(v.rate * 100).toFixed(2)}% (${v.passes} of ${v.passes + v.fails})`;
    case 'gauge':
      return `${v.value} (min ${v.min}, max ${v.max})`;
    default:
      return Object.keys(v)
        .map((k) => `${k}=${Number(v[k]).toFixed(2)}`)
        .join(' ');
  }
}

/**
 * A compact text summary: every threshold with its verdict, then every
 * metric. (k6 prints nothing of its own once handleSummary exists.)
 */
export function textSummary(data) {
  const lines = [];
  const names = Object.keys(data.metrics).sort();
  const failed = [];
  lines.push('thresholds:');
  for (const name of names) {
    const thresholds = data.metrics[name].thresholds || {};
    for (const expr of Object.keys(thresholds)) {
      const ok = thresholds[expr].ok;
      if (!ok) {
        failed.push(`${name} ${expr}`);
      }
      lines.push(`  ${ok ? 'ok  ' : 'FAIL'} ${name} ${expr}`);
    }
  }
  lines.push('metrics:');
  for (const name of names) {
    lines.push(`  ${name}: ${formatValues(data.metrics[name])}`);
  }
  lines.push(failed.length ? `FAILED thresholds: ${failed.join(', ')}` : 'all thresholds passed');
  return lines.join('\n') + '\n';
}

/**
 * handleSummary's outputs: the text summary on stdout and the full summary
 * as JSON in $SUMMARY_JSON (default `k6-summary-<script>.json` in the
 * working directory).
 */
export function summaryOutputs(script, data) {
  const file = __ENV.SUMMARY_JSON || `k6-summary-${script}.json`;
  return {
    stdout: textSummary(data),
    [file]: JSON.stringify(data, null, 2),
  };
}

/**
 * The delivery counters both subscriber scripts report (create them in the
 * init context). `record(a)` adds one subscriber's ledger from
 * `lib/ledger.js`'s `account`: losses a `herald.reset` announced count under
 * `announced`, the rest under `lost`; unknown events count as duplicates.
 */
export function deliveryCounters() {
  const c = {
    lost: new Counter('herald_k6_lost'),
    announced: new Counter('herald_k6_announced'),
    duplicated: new Counter('herald_k6_duplicated'),
    reordered: new Counter('herald_k6_reordered'),
    resets: new Counter('herald_k6_resets'),
    received: new Counter('herald_k6_received'),
  };
  c.record = (a) => {
    c.lost.add(a.lost);
    c.announced.add(a.announced);
    c.duplicated.add(a.duplicated + a.unexpected);
    c.reordered.add(a.reordered);
    c.resets.add(a.resets);
    c.received.add(a.received);
  };
  return c;
}

/** Thresholds of a complete delivery: nothing lost, repeated, reordered or reset. */
export const COMPLETE_DELIVERY = {
  herald_k6_lost: ['count==0'],
  herald_k6_announced: ['count==0'],
  herald_k6_duplicated: ['count==0'],
  herald_k6_reordered: ['count==0'],
  herald_k6_resets: ['count==0'],
};

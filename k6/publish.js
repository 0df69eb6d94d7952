// Publish load: one event per request, at a constant arrival rate, to
// POST /channels/{channel}/events on a loopback Herald.
//
//   k6 run k6/publish.js
//   k6 run -e RATE=2000 -e DURATION=60s -e CHANNELS=50 k6/publish.js
//
// Environment (all optional):
//   BASE_URL       the server (default http://127.0.0.1:8000); loopback only
//                  unless ALLOW_REMOTE=1
//   ALLOW_REMOTE   1: allow a non-loopback BASE_URL (a deployed Herald)
//   RATE           publishes per second (default 200)
//   DURATION       run time, e.g. 30s, 5m (default 30s, at most 1h)
//   CHANNELS       channels, round-robin (default 10)
//   CHANNEL_PREFIX channel name prefix (default k6); match it in `herald-bench`
//   PAYLOAD_BYTES  padding per event (default 100)
//   HERALD_TOKEN   bearer token with publish rights (not needed with the development config)
//   SUMMARY_JSON   where handleSummary writes the JSON summary
//                  (default k6-summary-publish.json)
//   P99_MS         p99 threshold of the publish request, ms (default 250)
//
// The run is bounded: RATE x DURATION iterations at most (checked against
// MAX_ITERATIONS), and in-flight requests get 5 s after the end.

import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import {
  BASE_URL,
  MAX_RATE,
  boundedIterations,
  channelName,
  durationEnv,
  eventData,
  intEnv,
  publishHeaders,
  requireServer,
  summaryOutputs,
} from './lib/common.js';

const RATE = intEnv('RATE', 200, 1, MAX_RATE);
const DURATION_SECS = durationEnv('DURATION', '30s');
const CHANNELS = intEnv('CHANNELS', 10, 1, 100000);
const PREFIX = __ENV.CHANNEL_PREFIX || 'k6';
const PAYLOAD_BYTES = intEnv('PAYLOAD_BYTES', 100, 0, 60000);
const P99_MS = intEnv('P99_MS', 250, 1, 60000);
const MAX_ITERATIONS = boundedIterations(RATE, DURATION_SECS);
const HEADERS = publishHeaders();

export const options = {
  scenarios: {
    publish: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${DURATION_SECS}s`,
      // A loopback request takes well under a millisecond; these VUs cover
      // latency spikes of up to ~0.5 s at the default rate.
      preAllocatedVUs: Math.min(Math.max(10, Math.ceil(RATE / 20)), 500),
      maxVUs: Math.min(Math.max(50, Math.ceil(RATE / 2)), 2000),
      gracefulStop: '5s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{scenario:publish}': [`p(99)<${P99_MS}`],
    checks: ['rate>0.99'],
  },
  setupTimeout: '10s',
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

export function setup() {
  const ready = requireServer();
  console.log(
    `publishing ${RATE}/s for ${DURATION_SECS}s (about ${MAX_ITERATIONS} events) ` +
      `over ${CHANNELS} channel(s) ${PREFIX}-0.. to ${BASE_URL} (epoch ${ready.epoch})`,
  );
}

export default function () {
  const i = exec.scenario.iterationInTest;
  const channel = channelName(PREFIX, i, CHANNELS);
  const body = JSON.stringify({ event: 'k6', data: eventData(i, PAYLOAD_BYTES) });
  const res = http.post(`${BASE_URL}/channels/${channel}/events`, body, {
    headers: HEADERS,
    tags: { name: 'POST /channels/{channel}/events' },
    timeout: '10s',
  });
  check(res, {
    'status is 202': (r) => r.status === 202,
    'body has an id': (r) => r.status === 202 && typeof r.json('id') === 'string',
  });
}

export function handleSummary(data) {
  return summaryOutputs('publish', data);
}

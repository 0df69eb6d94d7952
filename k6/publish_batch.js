// Batch publish load: BATCH events per request, at a constant arrival rate
// of requests, to POST /channels/{channel}/events/batch on a loopback Herald.
//
//   k6 run k6/publish_batch.js
//   k6 run -e RATE=100 -e BATCH=100 -e DURATION=60s k6/publish_batch.js
//
// Environment (all optional; see also k6/publish.js):
//   BASE_URL       the server (default http://127.0.0.1:8000); loopback only
//                  unless ALLOW_REMOTE=1
//   ALLOW_REMOTE   1: allow a non-loopback BASE_URL (a deployed Herald)
//   RATE           batch requests per second (default 20)
//   BATCH          events per request (default 50; keep it at or below the
//                  server's http.max_batch_events and limits.publish_burst)
//   DURATION       run time (default 30s, at most 1h)
//   CHANNELS       channels, round-robin per request (default 10)
//   CHANNEL_PREFIX channel name prefix (default k6)
//   PAYLOAD_BYTES  padding per event (default 100)
//   HERALD_TOKEN   bearer token with publish rights
//   SUMMARY_JSON   where handleSummary writes the JSON summary
//                  (default k6-summary-publish_batch.json)
//   P99_MS         p99 threshold of one batch request, ms (default 500)
//
// Bounded: RATE x DURATION requests, RATE x DURATION x BATCH events at most.

import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
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

const RATE = intEnv('RATE', 20, 1, MAX_RATE);
const BATCH = intEnv('BATCH', 50, 1, 10000);
const DURATION_SECS = durationEnv('DURATION', '30s');
const CHANNELS = intEnv('CHANNELS', 10, 1, 100000);
const PREFIX = __ENV.CHANNEL_PREFIX || 'k6';
const PAYLOAD_BYTES = intEnv('PAYLOAD_BYTES', 100, 0, 60000);
const P99_MS = intEnv('P99_MS', 500, 1, 60000);
const MAX_REQUESTS = boundedIterations(RATE, DURATION_SECS);
boundedIterations(RATE * BATCH, DURATION_SECS); // events, too
const HEADERS = publishHeaders();

/** Events the server accepted (202), summed over batches. */
const eventsPublished = new Counter('herald_k6_events_published');

export const options = {
  scenarios: {
    publish_batch: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${DURATION_SECS}s`,
      preAllocatedVUs: Math.min(Math.max(5, Math.ceil(RATE / 10)), 200),
      maxVUs: Math.min(Math.max(20, RATE), 1000),
      gracefulStop: '5s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{scenario:publish_batch}': [`p(99)<${P99_MS}`],
    checks: ['rate>0.99'],
  },
  setupTimeout: '10s',
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

export function setup() {
  const ready = requireServer();
  console.log(
    `publishing ${RATE} batches/s of ${BATCH} events for ${DURATION_SECS}s ` +
      `(about ${MAX_REQUESTS} requests) over ${CHANNELS} channel(s) to ${BASE_URL} (epoch ${ready.epoch})`,
  );
}

export default function () {
  const i = exec.scenario.iterationInTest;
  const channel = channelName(PREFIX, i, CHANNELS);
  const events = [];
  for (let j = 0; j < BATCH; j++) {
    events.push({ event: 'k6', data: eventData(i * BATCH + j, PAYLOAD_BYTES) });
  }
  const res = http.post(`${BASE_URL}/channels/${channel}/events/batch`, JSON.stringify({ events }), {
    headers: HEADERS,
    tags: { name: 'POST /channels/{channel}/events/batch' },
    timeout: '10s',
  });
  const ok = check(res, {
    'status is 202': (r) => r.status === 202,
    'one id per event': (r) => r.status === 202 && (r.json('ids') || []).length === BATCH,
  });
  if (ok) {
    eventsPublished.add(BATCH);
  }
}

export function handleSummary(data) {
  return summaryOutputs('publish_batch', data);
}

// SSE subscriber load: real Server-Sent Events streams held by k6 VUs, with
// the publishers driven from the same script. Needs a k6 built with the
// xk6-sse extension (see k6/README.md for the exact `xk6 build` command).
//
//   ./k6 run k6/subscribe.js                                   # fan-out
//   ./k6 run -e SCENARIO=storm -e RECONNECT_EVERY_MS=1000 k6/subscribe.js
//
// Two scenarios (SCENARIO, default fanout):
//   fanout  SUBSCRIBERS streams spread over CHANNELS channels; one publisher
//           VU per channel publishes EVENTS events at RATE/s.
//   storm   the same, and every RECONNECT_EVERY_MS all subscribers drop
//           their stream at once and resume with Last-Event-ID.
//
// Every subscriber resumes from a start marker published in setup(), so a
// subscriber that connects late still gets every event (by replay) and the
// count is exact. Each subscriber counts, per event of its channel:
//   herald_k6_lost        events that never arrived (threshold count==0)
//   herald_k6_duplicated  events that arrived twice (threshold count==0)
//   herald_k6_reordered   events that arrived out of order (count==0)
//   herald_k6_resets      herald.reset events (count==0: a resume within
//                         the ring must be complete)
//   herald_k6_complete    subscribers that saw their channel's last event
// plus herald_k6_delivery_ms (publish-to-receive, from the payload's send
// time), herald_k6_reconnects and herald_k6_publish_failed.
//
// Environment (all optional):
//   BASE_URL            the server (default http://127.0.0.1:8000); loopback
//                       only unless ALLOW_REMOTE=1
//   ALLOW_REMOTE        1: allow a non-loopback BASE_URL (a deployed Herald)
//   SCENARIO            fanout or storm (default fanout)
//   SUBSCRIBERS         streams, one VU each (default 50, at most 20000)
//   CHANNELS            channels, one publisher VU each (default 5, at most 1000)
//   EVENTS              events per channel (default 200, at most 100000)
//   RATE                events per second per channel (default 20, at most 1000)
//   PAYLOAD_BYTES       padding per event (default 100)
//   CONNECT_SECS        head start of the subscribers before publishing (default 3)
//   RECONNECT_EVERY_MS  storm: time between drops (default 2000)
//   CHANNEL_PREFIX      channel name prefix (default k6-sse; a run id is appended)
//   HERALD_TOKEN        bearer token with subscribe and publish rights
//   DELIVERY_P99_MS     fanout: p99 threshold of herald_k6_delivery_ms (default 1000)
//   SUMMARY_JSON        where handleSummary writes the JSON summary
//                       (default k6-summary-subscribe.json)
//
// Bounded: SUBSCRIBERS + CHANNELS VUs with one iteration each; every
// publish is retried at most PUBLISH_ATTEMPTS times; a subscriber reconnects
// at most MAX_CONNECTS times and gives up at its deadline (publishing time
// plus CONNECT_SECS plus DRAIN_SECS), which the scenario's maxDuration backs.
// Keep EVENTS x (1000 / RATE) ms of history within hub.ring_size, or a
// subscriber that drops for longer gets an `expired` reset.

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import exec from 'k6/execution';
import sse from 'k6/x/sse';
import {
  BASE_URL,
  COMPLETE_DELIVERY,
  authHeaders,
  deliveryCounters,
  intEnv,
  publishHeaders,
  requireServer,
  runId,
  summaryOutputs,
} from './lib/common.js';
import { account } from './lib/ledger.js';

const SCENARIO = __ENV.SCENARIO || 'fanout';
if (SCENARIO !== 'fanout' && SCENARIO !== 'storm') {
  throw new Error(`SCENARIO=${SCENARIO} must be fanout or storm`);
}
const STORM = SCENARIO === 'storm';
const SUBSCRIBERS = intEnv('SUBSCRIBERS', 50, 1, 20000);
const CHANNELS = intEnv('CHANNELS', 5, 1, 1000);
const EVENTS = intEnv('EVENTS', 200, 1, 100000);
const RATE = intEnv('RATE', 20, 1, 1000);
const PAYLOAD_BYTES = intEnv('PAYLOAD_BYTES', 100, 0, 60000);
const CONNECT_SECS = intEnv('CONNECT_SECS', 3, 1, 600);
const RECONNECT_EVERY_MS = intEnv('RECONNECT_EVERY_MS', 2000, 100, 600000);
const DELIVERY_P99_MS = intEnv('DELIVERY_P99_MS', 1000, 1, 600000);
const PREFIX = __ENV.CHANNEL_PREFIX || 'k6-sse';

/** Seconds one publisher needs, at most: EVENTS at RATE, plus retries. */
const PUBLISH_SECS = Math.ceil(EVENTS / RATE);
/** Time a subscriber waits for the tail after the last publish. */
const DRAIN_SECS = 10;
const SUBSCRIBER_SECS = CONNECT_SECS + PUBLISH_SECS + DRAIN_SECS;
if (SUBSCRIBER_SECS > 3600) {
  throw new Error(`EVENTS / RATE makes a ${SUBSCRIBER_SECS}s run; the limit is 3600s`);
}
const PUBLISH_ATTEMPTS = 5;
/** Reconnects per subscriber: one per drop, plus room for refused opens. */
const MAX_CONNECTS = STORM ? Math.ceil((SUBSCRIBER_SECS * 1000) / RECONNECT_EVERY_MS) + 20 : 20;

const counted = deliveryCounters();
const reconnects = new Counter('herald_k6_reconnects');
const publishFailed = new Counter('herald_k6_publish_failed');
const complete = new Rate('herald_k6_complete');
const delivery = new Trend('herald_k6_delivery_ms', true);

const thresholds = {
  ...COMPLETE_DELIVERY,
  herald_k6_publish_failed: ['count==0'],
  herald_k6_complete: ['rate==1'],
  checks: ['rate==1'],
};
if (STORM) {
  // The storm must really have happened.
  thresholds.herald_k6_reconnects = ['count>0'];
} else {
  thresholds.herald_k6_delivery_ms = [`p(99)<${DELIVERY_P99_MS}`];
}

export const options = {
  scenarios: {
    subscribers: {
      executor: 'per-vu-iterations',
      exec: 'subscriber',
      vus: SUBSCRIBERS,
      iterations: 1,
      // Each subscriber stops by itself at its deadline; this only backs it.
      maxDuration: `${SUBSCRIBER_SECS + 30}s`,
      gracefulStop: '5s',
    },
    publishers: {
      executor: 'per-vu-iterations',
      exec: 'publisher',
      vus: CHANNELS,
      iterations: 1,
      startTime: `${CONNECT_SECS}s`,
      maxDuration: `${PUBLISH_SECS + PUBLISH_ATTEMPTS * 12 + 10}s`,
      gracefulStop: '5s',
    },
  },
  thresholds,
  setupTimeout: `${Math.max(10, Math.ceil(CHANNELS / 50))}s`,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

/** Publishes one event; retries with the same Idempotency-Key. */
function publishOnce(channel, body, key) {
  const headers = Object.assign({ 'Idempotency-Key': key }, publishHeaders());
  for (let attempt = 1; attempt <= PUBLISH_ATTEMPTS; attempt++) {
    const res = http.post(`${BASE_URL}/channels/${channel}/events`, body, {
      headers,
      tags: { name: 'POST /channels/{channel}/events' },
      timeout: '10s',
      responseCallback: http.expectedStatuses(202),
    });
    if (res.status === 202) {
      return res.json('id');
    }
    sleep(Math.min(2, 0.2 * attempt));
  }
  return null;
}

/**
 * Publishes a start marker on every channel; subscribers resume after it.
 * Returns the run's channel prefix, the marker ids and the storm's clock.
 */
export function setup() {
  const ready = requireServer();
  const prefix = `${PREFIX}-${runId()}`;
  const markers = [];
  for (let c = 0; c < CHANNELS; c++) {
    const id = publishOnce(`${prefix}-${c}`, JSON.stringify({ event: 'k6.start', data: 'start' }), `${prefix}-${c}-start`);
    if (id === null) {
      exec.test.abort(`could not publish the start marker on ${prefix}-${c}`);
    }
    markers.push(id);
  }
  console.log(
    `${SCENARIO}: ${SUBSCRIBERS} subscribers on ${CHANNELS} channel(s) ${prefix}-0.., ` +
      `${EVENTS} events per channel at ${RATE}/s, to ${BASE_URL} (epoch ${ready.epoch})`,
  );
  return { prefix, markers, start: Date.now() };
}

/** One publisher per channel: EVENTS events in order, paced at RATE. */
export function publisher(data) {
  const c = exec.scenario.iterationInTest;
  const channel = `${data.prefix}-${c}`;
  const started = Date.now();
  for (let seq = 0; seq < EVENTS; seq++) {
    const due = started + (seq * 1000) / RATE;
    const wait = due - Date.now();
    if (wait > 0) {
      sleep(wait / 1000);
    }
    const body = JSON.stringify({
      data: { seq, sent_ms: Date.now(), pad: 'x'.repeat(PAYLOAD_BYTES) },
    });
    if (publishOnce(channel, body, `${channel}-${seq}`) === null) {
      publishFailed.add(1);
    }
  }
  publishFailed.add(0);
}

/** One subscriber: holds a stream until its channel's last event arrives. */
export function subscriber(data) {
  const s = exec.scenario.iterationInTest;
  const c = s % CHANNELS;
  const channel = `${data.prefix}-${c}`;
  const url = `${BASE_URL}/events?channel=${encodeURIComponent(channel)}`;
  const deadline = Date.now() + SUBSCRIBER_SECS * 1000;
  const got = [];
  let lastId = data.markers[c];
  let done = false;
  let nextDrop = data.start + RECONNECT_EVERY_MS;
  let drops = 0;
  for (let attempt = 0; attempt < MAX_CONNECTS && !done && Date.now() < deadline; attempt++) {
    const left = deadline - Date.now();
    const res = sse.open(
      url,
      {
        headers: Object.assign({ 'Last-Event-ID': lastId }, authHeaders()),
        // The whole exchange, stream included, ends by the deadline.
        timeout: `${left}ms`,
        tags: { name: 'GET /events' },
      },
      (client) => {
        client.on('event', (e) => {
          if (e.name === 'herald.reset') {
            got.push({ kind: 'reset', id: e.id });
            if (e.id) {
              lastId = e.id;
            }
            return;
          }
          // The `retry:` preamble and heartbeats parse as events without an id.
          if (!e.id) {
            return;
          }
          lastId = e.id;
          let body;
          try {
            body = JSON.parse(e.data);
          } catch (err) {
            got.push({ kind: 'event', key: `unparsable:${e.data}`, id: e.id });
            return;
          }
          got.push({ kind: 'event', key: body.seq, id: e.id });
          delivery.add(Date.now() - body.sent_ms);
          if (body.seq === EVENTS - 1) {
            done = true;
            client.close();
          } else if (STORM && Date.now() >= nextDrop) {
            // Every subscriber crosses the same boundary: they all drop
            // and come back together.
            while (nextDrop <= Date.now()) {
              nextDrop += RECONNECT_EVERY_MS;
            }
            drops++;
            client.close();
          }
        });
        client.on('error', () => client.close());
      },
    );
    check(res, { 'stream opened (200)': (r) => r && r.status === 200 });
    if (!res || res.status !== 200) {
      sleep(0.5);
    }
  }
  const published = [];
  for (let seq = 0; seq < EVENTS; seq++) {
    published.push({ key: seq });
  }
  const a = account(published, got);
  counted.record(a);
  reconnects.add(drops);
  complete.add(done);
  if (a.lost + a.announced + a.duplicated + a.unexpected + a.reordered + a.resets > 0) {
    console.warn(`subscriber ${s} on ${channel}: ${JSON.stringify(a)}`);
  }
}

export function handleSummary(data) {
  return summaryOutputs('subscribe', data);
}

// Real browsers resuming across a Herald restart. k6's built-in browser
// module drives Chromium: PAGES pages each subscribe with a real
// EventSource while this script publishes EVENTS events. After RESTART_AT
// events it logs RESTART_MARKER; a runner (k6/run.py browser) then restarts
// or drains Herald on the same address. The pages reconnect by themselves
// (EventSource sends Last-Event-ID), and the script accounts every page's
// deliveries against what it published.
//
//   python3 k6/run.py browser --case reset --case zero-loss
//
// EXPECT (default zero-loss) says what the restart must look like:
//   zero-loss  history outlives the restart (Herald on the Redis broker):
//              every page gets every event once and in order, no reset.
//   reset      history is lost with the process (the in-memory broker): each
//              page gets a `herald.reset` (reason unknown_epoch), then live
//              events; every event the reset does not announce still
//              arrives, none twice.
// Counters: herald_k6_lost (silent loss, count==0 in both cases),
// herald_k6_duplicated and herald_k6_reordered (count==0),
// herald_k6_resets (==0, or >= PAGES with EXPECT=reset),
// herald_k6_announced (events a reset announced as lost),
// herald_k6_page_reconnects (>= PAGES: every page lost its stream and came
// back on its own).
//
// Environment (all optional):
//   BASE_URL        the server (default http://127.0.0.1:8000); loopback only
//                   unless ALLOW_REMOTE=1
//   ALLOW_REMOTE    1: allow a non-loopback BASE_URL (restart it yourself
//                   when the marker appears, e.g. a rollout)
//   EXPECT          zero-loss or reset
//   PAGES           pages (default 3, at most 5)
//   EVENTS          events published (default 60, at most 1000)
//   INTERVAL_MS     pause between publishes (default 50)
//   RESTART_AT      events published before the marker (default EVENTS / 3)
//   RESTART_WAIT_S  longest wait for the pages to lose their streams after
//                   the marker (default 30)
//   HERALD_TOKEN    bearer token with publish rights (pages subscribe
//                   anonymously, so the channel needs anonymous_subscribe)
//   SUMMARY_JSON    where handleSummary writes the JSON summary
//                   (default k6-summary-browser_resume.json)
//   K6_BROWSER_EXECUTABLE_PATH, K6_BROWSER_ARGS, K6_BROWSER_HEADLESS: k6's
//                   own browser settings (the runner sets them).
//
// Bounded: EVENTS publishes, each retried for at most PUBLISH_WAIT_S; every
// wait polls with a deadline; the scenario's maxDuration backs them all.

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import exec from 'k6/execution';
import { browser } from 'k6/browser';
import {
  BASE_URL,
  COMPLETE_DELIVERY,
  deliveryCounters,
  intEnv,
  publishHeaders,
  requireServer,
  runId,
  summaryOutputs,
} from './lib/common.js';
import { account } from './lib/ledger.js';

/** The line the runner waits for before it restarts Herald. */
export const RESTART_MARKER = 'HERALD-K6-RESTART-NOW';

const EXPECT = __ENV.EXPECT || 'zero-loss';
if (EXPECT !== 'zero-loss' && EXPECT !== 'reset') {
  throw new Error(`EXPECT=${EXPECT} must be zero-loss or reset`);
}
// One browser context (k6 allows one at a time per VU), and Chromium opens
// at most 6 HTTP/1.1 connections per host in it: each page's stream holds one.
const PAGES = intEnv('PAGES', 3, 1, 5);
const EVENTS = intEnv('EVENTS', 60, 2, 1000);
const INTERVAL_MS = intEnv('INTERVAL_MS', 50, 0, 10000);
const RESTART_AT = intEnv('RESTART_AT', Math.floor(EVENTS / 3), 1, EVENTS - 1);
const RESTART_WAIT_S = intEnv('RESTART_WAIT_S', 30, 1, 600);
/** How long one event may take to be accepted, retries included. */
const PUBLISH_WAIT_S = 30;
/** How long the pages get to receive the last event. */
const TAIL_WAIT_S = 20;
const MAX_SECS =
  30 + RESTART_WAIT_S + TAIL_WAIT_S + Math.ceil((EVENTS * INTERVAL_MS) / 1000) + 2 * PUBLISH_WAIT_S;

const counted = deliveryCounters();
const pageReconnects = new Counter('herald_k6_page_reconnects');
const publishRetries = new Counter('herald_k6_publish_retries');

export const options = {
  scenarios: {
    resume: {
      executor: 'shared-iterations',
      vus: 1,
      iterations: 1,
      maxDuration: `${MAX_SECS}s`,
      options: { browser: { type: 'chromium' } },
    },
  },
  thresholds: {
    ...COMPLETE_DELIVERY,
    // After a new epoch every page must be told, and what the reset
    // announces is not counted as lost.
    ...(EXPECT === 'reset' ? { herald_k6_resets: [`count>=${PAGES}`], herald_k6_announced: [] } : {}),
    herald_k6_page_reconnects: [`count>=${PAGES}`],
    herald_k6_received: [`count>=${PAGES * RESTART_AT}`],
    checks: ['rate==1'],
  },
  setupTimeout: '10s',
};

/**
 * Runs in each page: opens an EventSource on the channel, resuming after
 * `lastId`, and records every event and reset in window.__herald. Native
 * EventSource reconnection (with Last-Event-ID) does the resuming; only if
 * the browser gives up (a non-200 answer, e.g. a 503 while draining) does
 * the page open a new EventSource itself, from the last id it saw.
 */
function pageRecorder(args) {
  const st = { items: [], opens: 0, errors: 0, reopened: 0, last: args.lastId };
  window.__herald = st;
  function connect() {
    const url =
      `/events?channel=${encodeURIComponent(args.channel)}` +
      `&lastEventId=${encodeURIComponent(st.last)}`;
    const es = new EventSource(url);
    es.onopen = () => {
      st.opens++;
    };
    es.onmessage = (e) => {
      let key = null;
      try {
        key = JSON.parse(e.data).seq;
      } catch (err) {
        key = `unparsable:${e.data}`;
      }
      st.items.push({ kind: 'event', key, id: e.lastEventId });
      st.last = e.lastEventId;
    };
    es.addEventListener('herald.reset', (e) => {
      let body = {};
      try {
        body = JSON.parse(e.data);
      } catch (err) {
        body = { reason: `unparsable:${e.data}` };
      }
      st.items.push({
        kind: 'reset',
        id: e.lastEventId,
        reason: body.reason,
        through: body.lost ? body.lost.through : null,
      });
      if (e.lastEventId) {
        st.last = e.lastEventId;
      }
    });
    es.onerror = () => {
      st.errors++;
      if (es.readyState === EventSource.CLOSED && st.reopened < 20) {
        st.reopened++;
        setTimeout(connect, 500);
      }
    };
  }
  connect();
}

function publish(channel, seq) {
  const body = JSON.stringify({ data: { seq, sent_ms: Date.now() } });
  const headers = Object.assign({ 'Idempotency-Key': `${channel}-${seq}` }, publishHeaders());
  const deadline = Date.now() + PUBLISH_WAIT_S * 1000;
  for (let attempt = 0; Date.now() < deadline && attempt < 1000; attempt++) {
    const res = http.post(`${BASE_URL}/channels/${channel}/events`, body, {
      headers,
      timeout: '2s',
      tags: { name: 'POST /channels/{channel}/events' },
      // Refusals while Herald restarts are expected; they are retried.
      responseCallback: http.expectedStatuses(202),
    });
    if (res.status === 202) {
      return res.json('id');
    }
    publishRetries.add(1);
    sleep(0.05);
  }
  return null;
}

async function states(pages) {
  const out = [];
  for (const page of pages) {
    out.push(JSON.parse(await page.evaluate(() => JSON.stringify(window.__herald))));
  }
  return out;
}

/** Polls the pages until `done(states)` or the deadline; returns the last states. */
async function waitFor(pages, seconds, done) {
  const deadline = Date.now() + seconds * 1000;
  let st = await states(pages);
  while (!done(st) && Date.now() < deadline) {
    sleep(0.1);
    st = await states(pages);
  }
  return st;
}

export function setup() {
  const ready = requireServer();
  const channel = `k6-browser-${runId()}`;
  // A start marker: the pages resume after it, so none misses an event.
  const start = publish(channel, 'start');
  if (start === null) {
    exec.test.abort(`could not publish to ${channel}`);
  }
  console.log(
    `${PAGES} pages on ${channel} at ${BASE_URL} (epoch ${ready.epoch}), ${EVENTS} events, ` +
      `restart after ${RESTART_AT}, expecting ${EXPECT}`,
  );
  return { channel, start };
}

export default async function (data) {
  const context = await browser.newContext();
  const pages = [];
  try {
    for (let i = 0; i < PAGES; i++) {
      const page = await context.newPage();
      pages.push(page);
      // Any page of Herald's own origin will do: EventSource is same-origin.
      await page.goto(`${BASE_URL}/healthz`);
      await page.evaluate(pageRecorder, { channel: data.channel, lastId: data.start });
    }
    let st = await waitFor(pages, 10, (s) => s.every((p) => p.opens >= 1));
    check(st, { 'every page opened its stream': (s) => s.every((p) => p.opens >= 1) });

    const published = [];
    for (let seq = 0; seq < EVENTS; seq++) {
      if (seq === RESTART_AT) {
        // Everything so far arrives live before the restart begins.
        st = await waitFor(pages, 10, (s) => s.every((p) => p.items.length >= RESTART_AT));
        console.log(`${RESTART_MARKER} after ${published.length} events`);
        // Publishing goes on while Herald restarts: those publishes are
        // refused and retried, and the events land while the pages are
        // still disconnected, so their resume has something to replay.
      }
      const id = publish(data.channel, seq);
      check(id, { 'publish accepted (with retries)': (v) => v !== null });
      if (id === null) {
        break;
      }
      published.push({ key: seq, id });
      if (seq === RESTART_AT) {
        // Wait (bounded) until every page has lost its stream: the restart
        // has begun, and the rest is published across the pages' resume.
        st = await waitFor(pages, RESTART_WAIT_S, (s) => s.every((p) => p.errors >= 1));
        check(st, { 'every page lost its stream': (s) => s.every((p) => p.errors >= 1) });
      }
      sleep(INTERVAL_MS / 1000);
    }
    const last = published.length ? published[published.length - 1].key : null;
    st = await waitFor(pages, TAIL_WAIT_S, (s) =>
      s.every((p) => p.items.some((it) => it.kind === 'event' && it.key === last)),
    );

    st.forEach((p, i) => {
      const a = account(published, p.items);
      const resetReasons = p.items.filter((it) => it.kind === 'reset').map((it) => it.reason);
      console.log(
        `page ${i}: ${JSON.stringify(a)}, opens ${p.opens}, errors ${p.errors}, ` +
          `reopened ${p.reopened}, resets ${JSON.stringify(resetReasons)}`,
      );
      counted.record(a);
      pageReconnects.add(p.opens >= 2 ? 1 : 0);
      if (EXPECT === 'reset') {
        check(resetReasons, {
          'the reset says unknown_epoch': (r) => r.length >= 1 && r.every((x) => x === 'unknown_epoch'),
        });
      }
    });
    publishRetries.add(0);
  } finally {
    for (const page of pages) {
      await page.close();
    }
    await context.close();
  }
}

export function handleSummary(data) {
  return summaryOutputs('browser_resume', data);
}

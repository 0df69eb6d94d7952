// Unit tests of k6/lib/ledger.js, the delivery accounting of the k6
// subscriber scripts: run with `node --test tests/k6/ledger.test.mjs`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { account, parseId, positionOf } from '../../k6/lib/ledger.js';

const published = [
  { key: 0, id: '100-1' },
  { key: 1, id: '100-4' },
  { key: 2, id: '200-1' },
  { key: 3, id: '200-2' },
  { key: 4, id: '200-7' },
];
const ev = (key) => ({ kind: 'event', key });

test('parses ids', () => {
  assert.deepEqual(parseId('1795824689565-42'), { epoch: '1795824689565', seq: 42 });
  assert.equal(parseId('garbage'), null);
  assert.equal(parseId(undefined), null);
});

test('a complete, ordered delivery counts nothing wrong', () => {
  const a = account(published, [0, 1, 2, 3, 4].map(ev));
  assert.deepEqual(a, {
    received: 5, lost: 0, announced: 0, duplicated: 0, unexpected: 0, reordered: 0, resets: 0,
  });
});

test('a missing event without a reset is a silent loss', () => {
  const a = account(published, [0, 1, 3, 4].map(ev));
  assert.equal(a.lost, 1);
  assert.equal(a.announced, 0);
});

test('duplicates, strangers and reordering are counted', () => {
  const a = account(published, [ev(0), ev(2), ev(1), ev(1), ev(3), ev(4), ev(9)]);
  assert.equal(a.duplicated, 1);
  assert.equal(a.unexpected, 1);
  assert.equal(a.reordered, 2); // 1 after 2, twice
  assert.equal(a.lost, 0);
});

test('a reset announces the events published up to its position', () => {
  // The page saw 0, then the server restarted into epoch 200 and the
  // resume got a reset at 200-2: 1, 2 and 3 are announced, 4 must arrive.
  const received = [ev(0), { kind: 'reset', id: '200-2', through: '200-2' }, ev(4)];
  assert.deepEqual(account(published, received), {
    received: 2, lost: 0, announced: 3, duplicated: 0, unexpected: 0, reordered: 0, resets: 1,
  });
  // Without event 4 after the reset, its loss is silent.
  assert.equal(account(published, received.slice(0, 2)).lost, 1);
});

test('positions order epochs by publish order', () => {
  assert.equal(positionOf(published, '100-3'), 0);
  assert.equal(positionOf(published, '200-0'), 1); // before the epoch's first event
  assert.equal(positionOf(published, '200-9'), 4);
  assert.equal(positionOf(published, '300-1'), 4); // a newer epoch with no events yet
  assert.equal(positionOf(published, '50-1'), -1); // an older epoch
  assert.equal(positionOf(published, 'x'), null);
  assert.equal(positionOf([{ key: 1 }], '100-1'), null); // no ids known
});

test('without published ids a reset announces nothing', () => {
  const keys = [{ key: 0 }, { key: 1 }];
  const a = account(keys, [{ kind: 'reset', id: '5-5' }, ev(1)]);
  assert.equal(a.lost, 1);
  assert.equal(a.announced, 0);
  assert.equal(a.resets, 1);
});

// Delivery accounting shared by the subscriber scripts: given what was
// published (in publish order) and what one subscriber received (in
// arrival order), count silent losses, losses a herald.reset announced,
// duplicates and reordering. Plain JavaScript, no k6 imports, so it runs
// the same in a k6 VU and is easy to reason about.

/** Parses an event id `<epoch>-<seq>` into { epoch, seq }, or null. */
export function parseId(id) {
  const m = /^(\d+)-(\d+)$/.exec(id || '');
  return m ? { epoch: m[1], seq: Number(m[2]) } : null;
}

/**
 * The index in `published` of the last event at or before `id`, using the
 * publish order to order epochs (an epoch's events were all published
 * after the previous epoch's). -1 when `id` precedes every published event;
 * null when the id does not parse or no published event has an id.
 */
export function positionOf(published, id) {
  const at = parseId(id);
  if (at === null) {
    return null;
  }
  let firstOfEpoch = -1;
  let last = -1;
  let lastEpoch = null;
  for (let i = 0; i < published.length; i++) {
    const p = parseId(published[i].id);
    if (p === null) {
      continue;
    }
    lastEpoch = p.epoch;
    if (p.epoch !== at.epoch) {
      continue;
    }
    if (firstOfEpoch < 0) {
      firstOfEpoch = i;
    }
    if (p.seq <= at.seq) {
      last = i;
    }
  }
  if (lastEpoch === null) {
    return null;
  }
  if (firstOfEpoch < 0) {
    // Nothing was published in that epoch: it began after every event
    // published so far (epochs are start times, in ms), or before them.
    const newer =
      at.epoch.length > lastEpoch.length ||
      (at.epoch.length === lastEpoch.length && at.epoch > lastEpoch);
    return newer ? published.length - 1 : -1;
  }
  return last >= 0 ? last : firstOfEpoch - 1;
}

/**
 * Accounts one subscriber's deliveries.
 *
 * published: [{ key, id? }] in publish order; `key` identifies the event
 *   in its payload, `id` is the id Herald answered (when known).
 * received: [{ kind: 'event', key, id } | { kind: 'reset', id, through }]
 *   in arrival order.
 *
 * Returns { received, lost, announced, duplicated, unexpected, reordered,
 * resets }: `lost` counts published events that never arrived and that no
 * reset announced (a reset at position P announces every missing event
 * published at or before P); `announced` those a reset covered.
 */
export function account(published, received) {
  const indexOf = new Map();
  published.forEach((p, i) => indexOf.set(String(p.key), i));
  const counts = new Array(published.length).fill(0);
  let duplicated = 0;
  let unexpected = 0;
  let reordered = 0;
  let resets = 0;
  let events = 0;
  let announcedThrough = -1;
  let previous = -1;
  for (const r of received) {
    if (r.kind === 'reset') {
      resets++;
      // A reset restarts ordering: what follows is replay or live.
      previous = -1;
      for (const id of [r.id, r.through]) {
        const pos = positionOf(published, id);
        if (pos !== null && pos > announcedThrough) {
          announcedThrough = pos;
        }
      }
      continue;
    }
    events++;
    const i = indexOf.get(String(r.key));
    if (i === undefined) {
      unexpected++;
      continue;
    }
    counts[i]++;
    if (counts[i] > 1) {
      duplicated++;
    }
    if (i < previous) {
      reordered++;
    }
    previous = Math.max(previous, i);
  }
  let lost = 0;
  let announced = 0;
  counts.forEach((c, i) => {
    if (c === 0) {
      if (i <= announcedThrough) {
        announced++;
      } else {
        lost++;
      }
    }
  });
  return { received: events, lost, announced, duplicated, unexpected, reordered, resets };
}

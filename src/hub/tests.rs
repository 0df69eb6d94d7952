//! Unit tests of the core: ordering, replay, resets, reaping.

use std::task::{Context, Poll, Waker};

use super::*;

fn settings(ring: usize) -> HubSettings {
    HubSettings {
        ring_size: ring,
        max_channels: 100,
        idle_ttl: Duration::ZERO,
        max_event_bytes: 1024,
        max_channel_name_len: 64,
        max_event_type_len: 32,
        max_tombstones: 10,
        max_memory_bytes: 64 << 20,
        max_batch_bytes: 64 * 1024,
        coalesce_ms: 0,
    }
}

fn ev(data: &str) -> NewEvent {
    NewEvent {
        event_type: None,
        data: data.to_string(),
        data_is_json: false,
    }
}

fn publish(hub: &Hub, ch: &str, data: &str) -> EventId {
    hub.publish(ch, vec![ev(data)], None)
        .expect("valid publish")[0]
}

/// Drains what the subscription has ready now, as text.
fn drain(sub: &mut Subscription) -> String {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = String::new();
    while let Poll::Ready(batch) = sub.poll_batch(&mut cx) {
        out.push_str(std::str::from_utf8(&batch.bytes).expect("utf8 frames"));
    }
    out
}

fn data_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn live_subscriber_sees_only_new_events() {
    let hub = Hub::with_epoch(settings(8), 5);
    publish(&hub, "a", "old");
    let mut sub = hub
        .subscribe(&names(&["a"]), Resume::Live, false)
        .expect("subscribe");
    assert_eq!(drain(&mut sub), "");
    publish(&hub, "a", "new");
    assert_eq!(drain(&mut sub), "id: 5-2\ndata: new\n\n");
}

#[test]
fn resume_gets_exactly_later_events() {
    let hub = Hub::with_epoch(settings(8), 5);
    let first = publish(&hub, "a", "1");
    publish(&hub, "a", "2");
    publish(&hub, "a", "3");
    let raw = first.to_string();
    let mut sub = hub
        .subscribe(&names(&["a"]), Resume::After(&raw), false)
        .expect("subscribe");
    assert_eq!(data_lines(&drain(&mut sub)), ["2", "3"]);
}

#[test]
fn multi_channel_resume_is_in_seq_order() {
    let hub = Hub::with_epoch(settings(8), 5);
    let start = publish(&hub, "a", "a0");
    for i in 0..3 {
        publish(&hub, "c", &format!("c{i}"));
        publish(&hub, "b", &format!("b{i}"));
        publish(&hub, "a", &format!("a{i}"));
        publish(&hub, "other", "x");
    }
    let raw = start.to_string();
    let mut sub = hub
        .subscribe(&names(&["a", "b", "c"]), Resume::After(&raw), false)
        .expect("subscribe");
    let text = drain(&mut sub);
    assert_eq!(
        data_lines(&text),
        ["c0", "b0", "a0", "c1", "b1", "a1", "c2", "b2", "a2"]
    );
    let seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| EventId::parse(id).expect("id").seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[test]
fn small_batches_keep_multi_channel_order() {
    let mut s = settings(64);
    s.max_batch_bytes = 1; // one event per channel per read
    let hub = Hub::with_epoch(s, 5);
    for i in 0..10 {
        publish(&hub, if i % 3 == 0 { "a" } else { "b" }, &i.to_string());
    }
    let mut sub = hub
        .subscribe(&names(&["a", "b"]), Resume::After("5-0"), false)
        .expect("subscribe");
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(data_lines(&drain(&mut sub)), expected);
}

#[test]
fn resume_older_than_ring_resets_then_replays_what_is_left() {
    let hub = Hub::with_epoch(settings(2), 5);
    for i in 1..=5 {
        publish(&hub, "a", &i.to_string());
    }
    let mut sub = hub
        .subscribe(&names(&["a"]), Resume::After("5-1"), false)
        .expect("subscribe");
    let text = drain(&mut sub);
    // The reset carries the id to resume from: the end of the lost range.
    assert!(text.starts_with("id: 5-3\nevent: herald.reset\n"), "{text}");
    assert!(text.contains("\"reason\":\"expired\""), "{text}");
    assert!(
        text.contains("\"after\":\"5-1\",\"through\":\"5-3\""),
        "{text}"
    );
    assert_eq!(data_lines(&text)[1..], ["4", "5"]);
}

#[test]
fn garbage_and_unknown_epoch_reset_then_go_live() {
    let hub = Hub::with_epoch(settings(8), 5);
    publish(&hub, "a", "before");
    for (raw, reason) in [
        ("garbage", "invalid_id"),
        ("4-1", "unknown_epoch"),
        ("5-999", "future_id"),
    ] {
        let mut sub = hub
            .subscribe(&names(&["a"]), Resume::After(raw), false)
            .expect("subscribe");
        let head = hub.head();
        let text = drain(&mut sub);
        assert!(
            text.starts_with(&format!("id: {head}\nevent: herald.reset\n")),
            "{raw}: {text}"
        );
        assert!(text.contains(&format!("\"reason\":\"{reason}\"")), "{text}");
        assert!(!text.contains("before"), "{text}");
        let id = publish(&hub, "a", "live");
        assert_eq!(drain(&mut sub), format!("id: {id}\ndata: live\n\n"));
    }
}

#[test]
fn overtaken_subscriber_gets_reset_and_continues() {
    let hub = Hub::with_epoch(settings(3), 5);
    let mut sub = hub
        .subscribe(&names(&["a"]), Resume::Live, false)
        .expect("subscribe");
    for i in 1..=10 {
        publish(&hub, "a", &i.to_string());
    }
    let text = drain(&mut sub);
    assert!(text.contains("\"reason\":\"overtaken\""), "{text}");
    assert!(
        text.contains("\"after\":\"5-0\",\"through\":\"5-7\""),
        "{text}"
    );
    assert_eq!(data_lines(&text)[1..], ["8", "9", "10"]);
    publish(&hub, "a", "11");
    assert_eq!(data_lines(&drain(&mut sub)), ["11"]);
}

#[test]
fn reaped_channel_history_is_not_silently_forgotten() {
    let hub = Hub::with_epoch(settings(8), 5);
    publish(&hub, "a", "1");
    publish(&hub, "a", "2");
    assert_eq!(hub.reap(), 1);
    assert_eq!(hub.channel_count(), 0);
    let mut sub = hub
        .subscribe(&names(&["a"]), Resume::After("5-1"), false)
        .expect("subscribe");
    let text = drain(&mut sub);
    assert!(
        text.contains("herald.reset") && text.contains("\"through\":\"5-2\""),
        "{text}"
    );
    // A resume from the end of the old history is complete.
    let mut sub = hub
        .subscribe(&names(&["a"]), Resume::After("5-2"), false)
        .expect("subscribe");
    assert_eq!(drain(&mut sub), "");
}

#[test]
fn channels_with_subscribers_are_not_reaped() {
    let hub = Hub::with_epoch(settings(8), 5);
    let sub = hub
        .subscribe(&names(&["a"]), Resume::Live, false)
        .expect("subscribe");
    publish(&hub, "a", "history");
    assert_eq!(hub.reap(), 0);
    drop(sub);
    assert_eq!(hub.reap(), 1);
}

#[test]
fn channels_without_history_leave_with_their_last_subscriber() {
    let mut s = settings(8);
    s.max_channels = 2;
    s.idle_ttl = Duration::from_secs(3600);
    let hub = Hub::with_epoch(s, 5);
    // Subscribers may open more empty channels than the capacity...
    let subs: Vec<Subscription> = (0..5)
        .map(|i| {
            hub.subscribe(&names(&[&format!("empty/{i}")]), Resume::Live, false)
                .expect("subscribe")
        })
        .collect();
    let twice = hub
        .subscribe(&names(&["empty/0"]), Resume::Live, false)
        .expect("subscribe");
    assert_eq!(hub.channel_count(), 5);
    assert_eq!(hub.history_channel_count(), 0);
    // ... and they cost publishers nothing.
    publish(&hub, "news/a", "x");
    publish(&hub, "empty/1", "first event");
    assert_eq!(hub.history_channel_count(), 2);
    assert_eq!(
        hub.publish("news/b", vec![ev("x")], None),
        Err(HubError::TooManyChannels(2))
    );
    assert!(
        hub.stats("news/b").is_none(),
        "a refused publish leaves nothing"
    );
    // An empty channel goes with its last subscriber, without a TTL.
    drop(subs);
    assert!(hub.stats("empty/0").is_some(), "still read by `twice`");
    assert!(hub.stats("empty/2").is_none());
    assert!(
        hub.stats("empty/1").is_some(),
        "held an event: kept until reaped"
    );
    drop(twice);
    assert_eq!(hub.channel_count(), 2);
}

#[test]
fn memory_budget_evicts_the_oldest_events_across_channels() {
    let mut s = settings(1000);
    let big = "x".repeat(900);
    let hub = Hub::with_epoch(s.clone(), 5);
    let one = hub.publish("a", vec![ev(&big)], None).expect("publish")[0];
    let charge = hub.retained_bytes();
    assert!(charge > 900 && charge < 1200, "{charge}");
    // Room for ten such events (ids from seq 10 on are a byte longer).
    let budget = 10 * charge + 5;
    s.max_memory_bytes = budget;
    let hub = Hub::with_epoch(s, 5);
    for i in 0..10 {
        publish(&hub, if i % 2 == 0 { "a" } else { "b" }, &big);
    }
    assert_eq!(hub.retained_bytes(), 10 * charge + 1);
    assert_eq!(hub.stats("a").expect("a").evicted_through, 0);
    // Three more evict the three oldest: seqs 1 (a), 2 (b), 3 (a).
    for _ in 0..3 {
        publish(&hub, "c", &big);
        assert!(hub.retained_bytes() <= budget);
    }
    assert_eq!(hub.stats("a").expect("a").evicted_through, 3);
    assert_eq!(hub.stats("b").expect("b").evicted_through, 2);
    assert_eq!(hub.stats("c").expect("c").ring_len, 3);
    // A subscriber resuming from before the evicted range gets a reset,
    // then the events that are left.
    let mut sub = hub
        .subscribe(&names(&["a"]), Resume::After(&one.to_string()), false)
        .expect("subscribe");
    let text = drain(&mut sub);
    assert!(
        text.contains("\"reason\":\"expired\"") && text.contains("\"through\":\"5-3\""),
        "{text}"
    );
    assert_eq!(data_lines(&text).len(), 1 + 3, "reset + seqs 5, 7, 9");
}

#[test]
fn channel_cap_and_validation() {
    let mut s = settings(8);
    s.max_channels = 2;
    let hub = Hub::with_epoch(s, 5);
    publish(&hub, "a", "x");
    publish(&hub, "b", "x");
    assert_eq!(
        hub.publish("c", vec![ev("x")], None),
        Err(HubError::TooManyChannels(2))
    );
    assert!(matches!(
        hub.validate_channel("bad name"),
        Err(HubError::InvalidChannel(_))
    ));
    assert!(hub.validate_channel("user/alice:inbox.v2-x_y").is_ok());
    let bad_type = NewEvent {
        event_type: Some("a\nb".into()),
        ..ev("x")
    };
    assert!(matches!(
        hub.validate_event(&bad_type),
        Err(HubError::InvalidEventType(_))
    ));
    assert!(matches!(
        hub.validate_event(&ev(&"x".repeat(2000))),
        Err(HubError::EventTooLarge { .. })
    ));
}

#[test]
fn concurrent_publishers_give_every_subscriber_one_total_order() {
    let hub = Hub::with_epoch(settings(100_000), 5);
    let mut subs: Vec<Subscription> = (0..4)
        .map(|_| {
            hub.subscribe(&names(&["a", "b"]), Resume::Live, false)
                .expect("subscribe")
        })
        .collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let hub = hub.clone();
            s.spawn(move || {
                for i in 0..500 {
                    let ch = if (t + i) % 2 == 0 { "a" } else { "b" };
                    hub.publish(ch, vec![ev(&format!("{t}-{i}"))], None)
                        .expect("publish");
                }
            });
        }
    });
    let first = drain(&mut subs[0]);
    assert_eq!(data_lines(&first).len(), 2000);
    for sub in &mut subs[1..] {
        assert_eq!(drain(sub), first);
    }
}

#[test]
fn fan_out_allocates_nothing_per_subscriber_per_event() {
    let hub = Hub::with_epoch(settings(1024), 5);
    let mut subs: Vec<Subscription> = (0..100)
        .map(|_| {
            hub.subscribe(&names(&["a"]), Resume::Live, false)
                .expect("subscribe")
        })
        .collect();
    // Warm up once, so every subscription has armed its wake-up and sized
    // its scratch space.
    publish(&hub, "a", "warm-up");
    for sub in &mut subs {
        assert!(!drain(sub).is_empty());
    }
    let mut cx = Context::from_waker(Waker::noop());
    // One event: every subscriber shares the event's frame (a refcount).
    publish(&hub, "a", "one");
    let single = allocation_counter::measure(|| {
        for sub in &mut subs {
            let Poll::Ready(batch) = sub.poll_batch(&mut cx) else {
                panic!("event pending")
            };
            assert_eq!(batch.events, 1);
            assert!(sub.poll_batch(&mut cx).is_pending());
        }
    });
    assert_eq!(
        single.count_total, 0,
        "allocations while fanning out one event: {single:?}"
    );
    // Ten events: one buffer per subscriber per batch, none per event (the
    // first burst sizes each subscription's reusable scratch list).
    for round in 0..2 {
        for i in 0..10 {
            publish(&hub, "a", &i.to_string());
        }
        let burst = allocation_counter::measure(|| {
            for sub in &mut subs {
                let Poll::Ready(batch) = sub.poll_batch(&mut cx) else {
                    panic!("events pending")
                };
                assert_eq!(batch.events, 10);
            }
        });
        if round == 1 {
            assert_eq!(
                burst.count_total,
                subs.len() as u64,
                "one allocation per batch: {burst:?}"
            );
        }
    }
}

#[test]
fn a_batch_larger_than_the_ring_keeps_the_accounting_whole() {
    let hub = Hub::with_epoch(settings(4), 5);
    let events: Vec<NewEvent> = (0..10).map(|i| ev(&i.to_string())).collect();
    hub.publish("a", events, None).expect("publish");
    let stats = hub.stats("a").expect("a");
    assert_eq!(stats.ring_len, 4);
    assert_eq!(stats.evicted_through, 6);
    assert_eq!(hub.retained_bytes(), stats.bytes);
    assert!(stats.bytes > 0);
    assert_eq!(hub.reap(), 1);
    assert_eq!(hub.retained_bytes(), 0, "reaping uncharges everything");
}

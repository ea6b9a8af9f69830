//! The per-key gate: the state machine that gives a group per-key order in this process. It
//! does no I/O — the caller reads, acks and nacks, and tells the gate — so it is tested here
//! without a server.
//!
//! Every message this process takes for one group enters the gate: new entries read with
//! `XREADGROUP`, its own pending entries recovered at start, a dead member's entries taken over
//! with `XAUTOCLAIM`, and due retries taken from the retry set. Per key the gate tracks a *head*,
//! the earliest message of the key not yet acked. Only the head may be with a member; later
//! messages of the key are *held* until the head is acked. A nacked head stays the head, waiting
//! in the retry set, until its retry is taken and handed out again; a head that was dropped
//! unsettled is handed out again at once. Other keys are unaffected throughout.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::Instant,
};

use weir_core::bus::Message;

use crate::names::Pos;

/// Where a message is pending in Redis while this process has it, which decides how it is
/// settled and kept alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// In the group's pending entries list, owned by this process's consumer.
    Stream,
    /// In the group's retry set, leased to this process.
    Retry,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub pos: Pos,
    pub attempt: u32,
    pub source: Source,
    pub message: Message,
}

enum Head {
    /// In the ready queue, waiting for a member.
    Ready,
    /// With a member. The copy is handed out again if the delivery is dropped unsettled.
    InFlight(Entry),
    /// Nacked, or found waiting in the retry set: the retry taker brings it back, by `until` at
    /// the latest (after that the gate stops holding the key).
    Waiting { until: Instant },
}

struct KeyQueue {
    head: Pos,
    state: Head,
    /// Later messages of the key, in stream order.
    held: BTreeMap<Pos, Entry>,
}

#[derive(Default)]
pub(crate) struct Gate {
    keys: HashMap<String, KeyQueue>,
    ready: VecDeque<Entry>,
    held: usize,
}

impl Gate {
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub(crate) fn held_len(&self) -> usize {
        self.held
    }

    /// Whether `key` has a message in this gate (or one waiting for its retry).
    pub(crate) fn knows(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// A message arrived. Returns whether a member can take something new.
    pub(crate) fn offer(&mut self, entry: Entry) -> bool {
        let Some(queue) = self.keys.get_mut(&entry.message.key) else {
            let queue = KeyQueue { head: entry.pos, state: Head::Ready, held: BTreeMap::new() };
            self.keys.insert(entry.message.key.clone(), queue);
            self.ready.push_back(entry);
            return true;
        };
        if entry.pos == queue.head {
            return match queue.state {
                // A newer copy of what waits (taken over again, or its retry): keep the newer.
                Head::Ready => {
                    if let Some(waiting) = self.ready.iter_mut().find(|e| e.pos == entry.pos) {
                        *waiting = entry;
                    }
                    false
                }
                // A member has it; a copy arriving meanwhile is not handed out twice.
                Head::InFlight(_) => false,
                Head::Waiting { .. } => {
                    queue.state = Head::Ready;
                    self.ready.push_back(entry);
                    true
                }
            };
        }
        if entry.pos < queue.head
            && matches!(queue.state, Head::Ready)
            && let Some(slot) = self.ready.iter_mut().find(|e| e.pos == queue.head)
        {
            // An earlier message of the key (a dead member's, taken over late) goes first, as
            // long as the later one was not handed out yet.
            let later = std::mem::replace(slot, entry);
            queue.head = slot.pos;
            queue.held.insert(later.pos, later);
            self.held += 1;
            return false;
        }
        if queue.held.insert(entry.pos, entry).is_none() {
            self.held += 1;
        }
        false
    }

    /// An earlier message of `key`, at `pos`, waits in the retry set (found there at start, or
    /// next to an entry taken over from a dead member): hold the key's later messages until it
    /// comes back, or until `until`.
    pub(crate) fn block(&mut self, key: &str, pos: Pos, until: Instant) {
        let Some(queue) = self.keys.get_mut(key) else {
            let queue = KeyQueue { head: pos, state: Head::Waiting { until }, held: BTreeMap::new() };
            self.keys.insert(key.to_owned(), queue);
            return;
        };
        if pos < queue.head
            && matches!(queue.state, Head::Ready)
            && let Some(index) = self.ready.iter().position(|e| e.pos == queue.head)
            && let Some(later) = self.ready.remove(index)
        {
            queue.held.insert(later.pos, later);
            self.held += 1;
            queue.head = pos;
            queue.state = Head::Waiting { until };
        }
    }

    /// Hands the next ready message to a member.
    pub(crate) fn take(&mut self) -> Option<Entry> {
        let entry = self.ready.pop_front()?;
        if let Some(queue) = self.keys.get_mut(&entry.message.key) {
            queue.state = Head::InFlight(entry.clone());
        }
        Some(entry)
    }

    /// Redis confirmed the ack of `pos`: the key's next message is released. Returns whether a
    /// member can take something new.
    pub(crate) fn acked(&mut self, key: &str, pos: Pos) -> bool {
        match self.keys.get_mut(key) {
            Some(queue) if queue.head == pos => {
                if matches!(queue.state, Head::Ready) {
                    self.ready.retain(|e| e.pos != pos);
                }
                self.release(key)
            }
            Some(queue) => {
                if queue.held.remove(&pos).is_some() {
                    self.held -= 1;
                }
                false
            }
            None => false,
        }
    }

    /// `pos` was moved to the retry set; the key's later messages stay held until its retry
    /// comes back (by `until` at the latest).
    pub(crate) fn nacked(&mut self, key: &str, pos: Pos, until: Instant) {
        if let Some(queue) = self.keys.get_mut(key)
            && queue.head == pos
            && matches!(queue.state, Head::InFlight(_))
        {
            queue.state = Head::Waiting { until };
        }
    }

    /// The delivery of `pos` was dropped unsettled (or settling it failed): hand it out again,
    /// first, with its attempt one higher. Returns whether a member can take something new.
    pub(crate) fn dropped(&mut self, key: &str, pos: Pos) -> bool {
        let Some(queue) = self.keys.get_mut(key) else { return false };
        if queue.head != pos {
            return false;
        }
        let Head::InFlight(entry) = std::mem::replace(&mut queue.state, Head::Ready) else {
            return false;
        };
        let mut entry = entry;
        entry.attempt = entry.attempt.saturating_add(1);
        self.ready.push_front(entry);
        true
    }

    /// Stops waiting for retries that are overdue (taken by another process, or lost with the
    /// entry), so that no key stays stuck. Returns the keys released.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(String, Pos)> {
        let overdue: Vec<(String, Pos)> = self
            .keys
            .iter()
            .filter(|(_, q)| matches!(q.state, Head::Waiting { until } if until <= now))
            .map(|(key, q)| (key.clone(), q.head))
            .collect();
        for (key, _) in &overdue {
            self.release(key);
        }
        overdue
    }

    /// Everything this process has of the group and must keep from being taken over — ready,
    /// held and with members — in stream order, by where it is pending.
    pub(crate) fn holding(&self) -> (Vec<Pos>, Vec<Pos>) {
        let in_flight = self.keys.values().filter_map(|q| match &q.state {
            Head::InFlight(entry) => Some(entry),
            _ => None,
        });
        let held = self.keys.values().flat_map(|q| q.held.values());
        let mut entries: Vec<&Entry> = self.ready.iter().chain(held).chain(in_flight).collect();
        entries.sort_by_key(|e| e.pos);
        let (stream, retry): (Vec<&Entry>, Vec<&Entry>) = entries.into_iter().partition(|e| e.source == Source::Stream);
        (stream.into_iter().map(|e| e.pos).collect(), retry.into_iter().map(|e| e.pos).collect())
    }

    fn release(&mut self, key: &str) -> bool {
        let Some(queue) = self.keys.get_mut(key) else { return false };
        match queue.held.pop_first() {
            Some((pos, entry)) => {
                self.held -= 1;
                queue.head = pos;
                queue.state = Head::Ready;
                self.ready.push_back(entry);
                true
            }
            None => {
                self.keys.remove(key);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::names::StreamId;

    fn pos(ms: u64) -> Pos {
        Pos { id: StreamId { ms, seq: 0 }, partition: 0 }
    }

    fn entry(ms: u64, key: &str) -> Entry {
        Entry { pos: pos(ms), attempt: 1, source: Source::Stream, message: Message::new(key, "x") }
    }

    fn take_ms(gate: &mut Gate) -> Option<u64> {
        gate.take().map(|e| e.pos.id.ms)
    }

    #[test]
    fn one_message_per_key_at_a_time() {
        let mut g = Gate::default();
        for (ms, key) in [(1, "a"), (2, "a"), (3, "b"), (4, "a")] {
            g.offer(entry(ms, key));
        }
        assert_eq!(g.held_len(), 2);
        assert_eq!(take_ms(&mut g), Some(1));
        assert_eq!(take_ms(&mut g), Some(3));
        assert_eq!(take_ms(&mut g), None, "2 must wait for 1");
        assert!(g.acked("a", pos(1)));
        assert_eq!(take_ms(&mut g), Some(2));
        assert!(g.acked("a", pos(2)));
        assert_eq!(take_ms(&mut g), Some(4));
        assert!(!g.acked("a", pos(4)));
        assert!(!g.acked("b", pos(3)));
        assert!(g.keys.is_empty());
        assert_eq!(g.held_len(), 0);
    }

    #[test]
    fn nack_holds_only_its_key_until_the_retry_comes_back() {
        let mut g = Gate::default();
        let until = Instant::now() + Duration::from_secs(60);
        g.offer(entry(1, "a"));
        g.offer(entry(2, "a"));
        g.offer(entry(3, "b"));
        assert_eq!(take_ms(&mut g), Some(1));
        g.nacked("a", pos(1), until);
        assert_eq!(take_ms(&mut g), Some(3), "other keys flow on");
        assert_eq!(take_ms(&mut g), None, "2 stays behind the nacked 1");
        let retry = Entry { attempt: 2, source: Source::Retry, ..entry(1, "a") };
        assert!(g.offer(retry));
        let again = g.take().unwrap();
        assert_eq!((again.pos, again.attempt, again.source), (pos(1), 2, Source::Retry));
        assert!(g.acked("a", pos(1)));
        assert_eq!(take_ms(&mut g), Some(2));
    }

    #[test]
    fn a_dropped_delivery_comes_back_first_with_a_higher_attempt() {
        let mut g = Gate::default();
        g.offer(entry(1, "a"));
        g.offer(entry(2, "b"));
        assert_eq!(take_ms(&mut g), Some(1));
        assert!(g.dropped("a", pos(1)));
        let again = g.take().unwrap();
        assert_eq!((again.pos, again.attempt), (pos(1), 2));
        assert!(!g.dropped("a", pos(9)), "not the head");
        assert!(!g.dropped("zzz", pos(1)));
    }

    #[test]
    fn copies_of_a_known_message_are_not_handed_out_twice() {
        let mut g = Gate::default();
        g.offer(entry(1, "a"));
        assert!(!g.offer(Entry { attempt: 3, ..entry(1, "a") }), "a newer copy replaces the ready one");
        assert_eq!(g.ready_len(), 1);
        assert_eq!(g.take().map(|e| e.attempt), Some(3));
        assert!(!g.offer(entry(1, "a")), "in flight");
        assert_eq!(g.ready_len(), 0);
        g.offer(entry(2, "a"));
        g.offer(entry(2, "a"));
        assert_eq!(g.held_len(), 1);
    }

    #[test]
    fn an_earlier_message_taken_over_late_goes_first_if_it_still_can() {
        let mut g = Gate::default();
        g.offer(entry(5, "a"));
        g.offer(entry(3, "a"));
        assert_eq!(take_ms(&mut g), Some(3));
        assert!(g.acked("a", pos(3)));
        assert_eq!(take_ms(&mut g), Some(5));
        // Too late once the later one is with a member: the earlier one follows it.
        g.offer(entry(1, "a"));
        assert_eq!(take_ms(&mut g), None);
        assert!(g.acked("a", pos(5)));
        assert_eq!(take_ms(&mut g), Some(1));
    }

    #[test]
    fn a_retry_found_in_redis_blocks_its_key() {
        let mut g = Gate::default();
        let until = Instant::now() + Duration::from_secs(60);
        g.block("a", pos(1), until);
        g.offer(entry(2, "a"));
        g.offer(entry(7, "b"));
        g.offer(entry(9, "c"));
        g.block("c", pos(8), until);
        assert_eq!(take_ms(&mut g), Some(7), "a and c wait for their retries");
        assert_eq!(take_ms(&mut g), None);
        assert!(g.offer(Entry { source: Source::Retry, ..entry(8, "c") }));
        assert_eq!(take_ms(&mut g), Some(8));
        assert!(g.acked("c", pos(8)));
        assert_eq!(take_ms(&mut g), Some(9));
        assert_eq!(g.expire(until - Duration::from_secs(1)), vec![]);
        assert_eq!(g.expire(until), vec![("a".to_owned(), pos(1))], "an overdue retry releases its key");
        assert_eq!(take_ms(&mut g), Some(2));
    }

    #[test]
    fn holding_lists_what_must_be_kept_alive_in_stream_order() {
        let mut g = Gate::default();
        g.offer(entry(4, "a"));
        g.offer(entry(2, "b"));
        g.offer(Entry { source: Source::Retry, ..entry(1, "c") });
        g.offer(entry(6, "a"));
        g.take();
        let (stream, retry) = g.holding();
        assert_eq!(stream, vec![pos(2), pos(4), pos(6)]);
        assert_eq!(retry, vec![pos(1)]);
        g.take();
        g.nacked("b", pos(2), Instant::now());
        assert_eq!(g.holding().0, vec![pos(4), pos(6)], "a nacked message is in the retry set, not held");
    }
}

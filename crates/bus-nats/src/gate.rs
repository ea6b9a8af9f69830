//! The per-key gate: the state machine that turns JetStream's unordered redeliveries into
//! per-key order. It does no I/O — callers perform the acks, naks and progress signals it asks
//! for — so it is tested here without a server.
//!
//! Every message JetStream hands to this process for one group enters the gate. Per key, the
//! gate tracks a *head*: the earliest message of the key not yet acked. Only the head may be
//! with a member; later messages of the key are *held* until the head is acked. A nacked (or
//! abandoned) head stays the head while JetStream redelivers it; its redelivery is recognised by
//! its stream sequence and handed out again. Other keys are unaffected throughout.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use weir_core::bus::Message;

/// How many recently acked sequences are remembered to recognise stale redeliveries.
const ACKED_MEMORY: usize = 4096;

/// One JetStream delivery as the gate sees it. `H` settles it with the server.
pub(crate) struct Entry<H> {
    /// The stream sequence: identifies the message across redeliveries.
    pub seq: u64,
    /// JetStream's delivery count for this delivery.
    pub attempt: u32,
    pub message: Message,
    pub handle: H,
}

enum Head<H> {
    /// Waiting in the ready queue for a member.
    Ready,
    /// With a member. `handle` is the newest delivery's: JetStream may redeliver a message that
    /// outlives its ack wait, and the newest delivery is the one to settle.
    InFlight { handle: H, attempt: u32 },
    /// Nacked or abandoned; JetStream will redeliver it, by `deadline` at the latest.
    Waiting { deadline: Instant },
}

struct KeyQueue<H> {
    head: u64,
    state: Head<H>,
    /// Later messages of the key, by stream sequence.
    held: BTreeMap<u64, Entry<H>>,
}

/// What became of an offered delivery.
pub(crate) enum Offer<H> {
    /// It is in the ready queue: wake a member.
    Ready,
    /// It waits behind an earlier message of its key, or replaced an older copy of itself.
    Held,
    /// This gate already acked it: the redelivery crossed the ack. Ack it again, deliver nothing.
    AlreadyAcked(H),
}

pub(crate) struct Gate<H> {
    keys: HashMap<String, KeyQueue<H>>,
    ready: VecDeque<Entry<H>>,
    acked: HashSet<u64>,
    acked_order: VecDeque<u64>,
    /// JetStream stops redelivering after this many deliveries; a head that reached it is gone.
    max_deliver: Option<u32>,
    /// Slack beyond a redelivery's expected time before the gate stops waiting for it.
    grace: Duration,
}

impl<H: Clone> Gate<H> {
    pub(crate) fn new(max_deliver: Option<u32>, grace: Duration) -> Self {
        Self {
            keys: HashMap::new(),
            ready: VecDeque::new(),
            acked: HashSet::new(),
            acked_order: VecDeque::new(),
            max_deliver,
            grace,
        }
    }

    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// A delivery arrived from JetStream.
    pub(crate) fn offer(&mut self, entry: Entry<H>) -> Offer<H> {
        if self.acked.contains(&entry.seq) {
            return Offer::AlreadyAcked(entry.handle);
        }
        let Some(queue) = self.keys.get_mut(&entry.message.key) else {
            let queue = KeyQueue { head: entry.seq, state: Head::Ready, held: BTreeMap::new() };
            self.keys.insert(entry.message.key.clone(), queue);
            self.ready.push_back(entry);
            return Offer::Ready;
        };
        if entry.seq != queue.head {
            // A later message of the key, or a redelivery of one already held (which replaces
            // it: its handle is the live one). A message *earlier* than the head only arrives
            // when another process held it and died; it is queued after the head, as the head
            // may already be with a member.
            queue.held.insert(entry.seq, entry);
            return Offer::Held;
        }
        match &mut queue.state {
            Head::Ready => {
                if let Some(waiting) = self.ready.iter_mut().find(|e| e.seq == entry.seq) {
                    *waiting = entry;
                }
                Offer::Held
            }
            Head::InFlight { handle, attempt } => {
                *handle = entry.handle;
                *attempt = entry.attempt;
                Offer::Held
            }
            Head::Waiting { .. } => {
                queue.state = Head::Ready;
                self.ready.push_back(entry);
                Offer::Ready
            }
        }
    }

    /// Hands the next ready message to a member.
    pub(crate) fn take(&mut self) -> Option<Entry<H>> {
        let entry = self.ready.pop_front()?;
        if let Some(queue) = self.keys.get_mut(&entry.message.key) {
            queue.state = Head::InFlight { handle: entry.handle.clone(), attempt: entry.attempt };
        }
        Some(entry)
    }

    /// The handle to settle an in-flight message with: the newest delivery's.
    pub(crate) fn settle_handle(&self, key: &str, seq: u64) -> Option<H> {
        match self.keys.get(key) {
            Some(KeyQueue { head, state: Head::InFlight { handle, .. }, .. }) if *head == seq => Some(handle.clone()),
            _ => None,
        }
    }

    /// The server confirmed the ack of `seq`: release the next message of its key.
    /// Returns whether a message became ready.
    pub(crate) fn acked(&mut self, key: &str, seq: u64) -> bool {
        self.remember_acked(seq);
        match self.keys.get_mut(key) {
            Some(queue) if queue.head == seq => self.release(key),
            Some(queue) => {
                queue.held.remove(&seq);
                false
            }
            None => false,
        }
    }

    /// `seq` was nacked or abandoned: JetStream redelivers it within `expected`. Later messages of
    /// its key stay held until then. Returns whether a message became ready (when JetStream will
    /// not redeliver it, having reached `max_deliver`, and the key moves on).
    pub(crate) fn waiting(&mut self, key: &str, seq: u64, expected: Duration, now: Instant) -> bool {
        let Some(queue) = self.keys.get_mut(key) else { return false };
        let Head::InFlight { attempt, .. } = queue.state else { return false };
        if queue.head != seq {
            return false;
        }
        if self.max_deliver.is_some_and(|max| attempt >= max) {
            return self.release(key);
        }
        queue.state = Head::Waiting { deadline: now + expected + self.grace };
        false
    }

    /// Gives up on redeliveries that are overdue (the ack or nak reached the server although
    /// the gate was told otherwise, or the consumer was reset) so that no key stays stuck.
    /// Returns the keys released.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(String, u64)> {
        let overdue: Vec<(String, u64)> = self
            .keys
            .iter()
            .filter(|(_, q)| matches!(q.state, Head::Waiting { deadline } if deadline <= now))
            .map(|(key, q)| (key.clone(), q.head))
            .collect();
        for (key, _) in &overdue {
            self.release(key);
        }
        overdue
    }

    /// Handles of every message the gate holds back from members (ready or held), in stream
    /// order: they need progress signals so that JetStream does not redeliver them while they
    /// wait here. Stream order keeps the ack timers of a key's messages in the key's order.
    pub(crate) fn waiting_handles(&self) -> Vec<H> {
        let held = self.keys.values().flat_map(|q| q.held.values());
        let mut entries: Vec<&Entry<H>> = self.ready.iter().chain(held).collect();
        entries.sort_by_key(|e| e.seq);
        entries.into_iter().map(|e| e.handle.clone()).collect()
    }

    /// When `seq` has just been (re)delivered as the head of `key`, the handles of the key's held
    /// messages, in stream order. Refreshing their ack timers now makes them expire after the
    /// head's: if this process dies, JetStream redelivers the key's messages in order.
    pub(crate) fn held_behind(&self, key: &str, seq: u64) -> Vec<H> {
        match self.keys.get(key) {
            Some(queue) if queue.head == seq => queue.held.values().map(|e| e.handle.clone()).collect(),
            _ => Vec::new(),
        }
    }

    fn release(&mut self, key: &str) -> bool {
        let Some(queue) = self.keys.get_mut(key) else { return false };
        match queue.held.pop_first() {
            Some((seq, entry)) => {
                queue.head = seq;
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

    fn remember_acked(&mut self, seq: u64) {
        if self.acked.insert(seq) {
            self.acked_order.push_back(seq);
            if self.acked_order.len() > ACKED_MEMORY
                && let Some(old) = self.acked_order.pop_front()
            {
                self.acked.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(1);

    /// The handle records which delivery of a message it belongs to.
    fn entry(seq: u64, key: &str, attempt: u32) -> Entry<(u64, u32)> {
        Entry { seq, attempt, message: Message::new(key, "x"), handle: (seq, attempt) }
    }

    fn gate() -> Gate<(u64, u32)> {
        Gate::new(Some(5), WAIT)
    }

    fn take_seq(gate: &mut Gate<(u64, u32)>) -> Option<u64> {
        gate.take().map(|e| e.seq)
    }

    #[test]
    fn one_message_per_key_at_a_time() {
        let mut g = gate();
        for (seq, key) in [(1, "a"), (2, "a"), (3, "b"), (4, "a")] {
            g.offer(entry(seq, key, 1));
        }
        assert_eq!(take_seq(&mut g), Some(1));
        assert_eq!(take_seq(&mut g), Some(3));
        assert_eq!(take_seq(&mut g), None, "2 must wait for 1");
        assert!(g.acked("a", 1));
        assert_eq!(take_seq(&mut g), Some(2));
        assert!(g.acked("a", 2));
        assert_eq!(take_seq(&mut g), Some(4));
        assert!(!g.acked("a", 4));
        assert!(!g.acked("b", 3));
        assert!(g.keys.is_empty());
    }

    #[test]
    fn nack_holds_only_its_key_until_the_redelivery() {
        let mut g = gate();
        let now = Instant::now();
        g.offer(entry(1, "a", 1));
        g.offer(entry(2, "a", 1));
        g.offer(entry(3, "b", 1));
        assert_eq!(take_seq(&mut g), Some(1));
        assert!(!g.waiting("a", 1, WAIT, now));
        assert_eq!(take_seq(&mut g), Some(3), "other keys flow on");
        assert_eq!(take_seq(&mut g), None, "2 stays behind the nacked 1");
        assert!(matches!(g.offer(entry(1, "a", 2)), Offer::Ready));
        let again = g.take().unwrap();
        assert_eq!((again.seq, again.attempt), (1, 2));
        assert!(g.acked("a", 1));
        assert_eq!(take_seq(&mut g), Some(2));
    }

    #[test]
    fn redelivery_of_an_in_flight_message_updates_its_handle() {
        let mut g = gate();
        g.offer(entry(1, "a", 1));
        g.take();
        assert!(matches!(g.offer(entry(1, "a", 2)), Offer::Held));
        assert_eq!(g.settle_handle("a", 1), Some((1, 2)));
        assert_eq!(take_seq(&mut g), None, "not handed out twice");
    }

    #[test]
    fn redelivery_of_a_waiting_message_replaces_it() {
        let mut g = gate();
        g.offer(entry(1, "a", 1));
        g.offer(entry(1, "a", 2));
        assert_eq!(g.ready_len(), 1);
        g.offer(entry(2, "a", 1));
        g.offer(entry(2, "a", 2));
        assert_eq!(g.waiting_handles(), vec![(1, 2), (2, 2)]);
    }

    #[test]
    fn a_head_delivery_refreshes_its_key_in_order() {
        let mut g = gate();
        for (seq, key) in [(1, "a"), (2, "b"), (3, "a"), (4, "a")] {
            g.offer(entry(seq, key, 1));
        }
        assert_eq!(g.held_behind("a", 1), vec![(3, 1), (4, 1)]);
        assert_eq!(g.held_behind("a", 3), vec![], "3 is not the head");
        assert_eq!(g.held_behind("b", 2), vec![]);
        assert_eq!(g.waiting_handles(), vec![(1, 1), (2, 1), (3, 1), (4, 1)]);
    }

    #[test]
    fn stale_redelivery_after_ack_is_acked_again() {
        let mut g = gate();
        g.offer(entry(1, "a", 1));
        g.take();
        g.acked("a", 1);
        assert!(matches!(g.offer(entry(1, "a", 2)), Offer::AlreadyAcked((1, 2))));
        assert_eq!(g.ready_len(), 0);
    }

    #[test]
    fn max_deliver_releases_the_key() {
        let mut g = gate();
        g.offer(entry(1, "a", 5));
        g.offer(entry(2, "a", 1));
        g.take();
        assert!(g.waiting("a", 1, WAIT, Instant::now()), "JetStream will not redeliver 1");
        assert_eq!(take_seq(&mut g), Some(2));
    }

    #[test]
    fn overdue_redelivery_releases_the_key() {
        let mut g = gate();
        let now = Instant::now();
        g.offer(entry(1, "a", 1));
        g.offer(entry(2, "a", 1));
        g.take();
        g.waiting("a", 1, WAIT, now);
        assert!(g.expire(now + WAIT).is_empty());
        assert_eq!(g.expire(now + 3 * WAIT), vec![("a".to_owned(), 1)]);
        assert_eq!(take_seq(&mut g), Some(2));
    }

    #[test]
    fn settling_a_stale_sequence_changes_nothing() {
        let mut g = gate();
        g.offer(entry(1, "a", 1));
        g.take();
        assert_eq!(g.settle_handle("a", 7), None);
        assert!(!g.waiting("a", 7, WAIT, Instant::now()));
        assert!(!g.acked("zzz", 9));
        assert_eq!(g.settle_handle("a", 1), Some((1, 1)));
    }
}

//! The per-key gate: the state machine that keeps a group's messages of one key in order
//! through nacks, delays and broker returns. It does no I/O — callers ack, requeue and forward
//! what it tells them to — so it is tested here without a broker.
//!
//! Per key the gate tracks a *head*: the one message of the key that may be with a member. A
//! later message that arrives while the head is out is *held* in memory (unacked at the
//! broker). A nacked head is copied to a delay queue and its key becomes *away*: the head and
//! its held successors leave, in order, and every later arrival of the key follows them, so
//! nothing overtakes the nacked message while it waits — and nothing waits in this process's
//! prefetch window either. When the messages come back from their delay queues, they are let in
//! strictly in the order they left; one that comes back out of turn, or early, is sent round
//! again.

use std::collections::{HashMap, VecDeque};

use weir_core::bus::Message;

/// One delivery as the gate sees it; `H` settles it with the broker.
pub(crate) struct Entry<H> {
    /// The transport's message id: the same across redeliveries and copies.
    pub id: String,
    pub attempt: u32,
    /// Milliseconds since the epoch before which the message may not be handed out.
    pub not_before: Option<u64>,
    pub message: Message,
    pub handle: H,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// In the ready queue, waiting for a member.
    Ready,
    /// With a member.
    InFlight,
    /// Dropped unsettled and requeued: the broker hands it back.
    Returning,
}

struct KeyState<H> {
    head: Option<(String, Head)>,
    /// Later messages of the key, in arrival order, while the head is out.
    held: VecDeque<Entry<H>>,
    /// Messages of the key sent to delay queues, in the order they must come back.
    away: VecDeque<String>,
    /// When the first message away is due: later ones are sent round no sooner.
    due: u64,
}

impl<H> KeyState<H> {
    fn new() -> Self {
        Self { head: None, held: VecDeque::new(), away: VecDeque::new(), due: 0 }
    }
}

/// What to do with a delivery the gate was offered.
pub(crate) enum Offer<H> {
    /// It is in the ready queue: wake a member.
    Ready,
    /// It waits in memory behind an earlier message of its key.
    Held,
    /// Send it to wait until the given time (or at once, if that has passed) behind the
    /// messages of its key that are away, then ack the original.
    Forward(Entry<H>, u64),
}

pub(crate) struct Gate<H> {
    keys: HashMap<String, KeyState<H>>,
    ready: VecDeque<Entry<H>>,
}

impl<H> Gate<H> {
    pub(crate) fn new() -> Self {
        Self { keys: HashMap::new(), ready: VecDeque::new() }
    }

    /// A delivery arrived from the broker at `now` (milliseconds since the epoch).
    pub(crate) fn offer(&mut self, entry: Entry<H>, now: u64) -> Offer<H> {
        let early = entry.not_before.filter(|t| *t > now);
        let state = self.keys.entry(entry.message.key.clone()).or_insert_with(KeyState::new);
        // The head handed back by the broker after it was dropped.
        if let Some((id, head)) = &mut state.head
            && *id == entry.id
        {
            match head {
                Head::Returning => {
                    *head = Head::Ready;
                    self.ready.push_back(entry);
                    return Offer::Ready;
                }
                // A second copy of the head (a delay hop that was already under way): the
                // head is handled, so this one goes round behind the key.
                Head::Ready | Head::InFlight => {
                    state.away.push_back(entry.id.clone());
                    let due = state.due.max(entry.not_before.unwrap_or(0));
                    return Offer::Forward(entry, due);
                }
            }
        }
        if !state.away.is_empty() {
            if state.away.front() == Some(&entry.id) {
                if let Some(due) = early {
                    return Offer::Forward(entry, due);
                }
                state.away.pop_front();
                if state.head.is_none() {
                    state.head = Some((entry.id.clone(), Head::Ready));
                    self.ready.push_back(entry);
                    return Offer::Ready;
                }
                state.held.push_back(entry);
                return Offer::Held;
            }
            if !state.away.contains(&entry.id) {
                state.away.push_back(entry.id.clone());
            }
            let due = state.due.max(entry.not_before.unwrap_or(0));
            return Offer::Forward(entry, due);
        }
        if let Some(due) = early
            && state.head.is_none()
        {
            // A message on its way back from a delay whose key this process knows nothing of
            // (it restarted meanwhile): it leads the key until it is due.
            state.away.push_back(entry.id.clone());
            state.due = due;
            return Offer::Forward(entry, due);
        }
        if state.head.is_none() {
            state.head = Some((entry.id.clone(), Head::Ready));
            self.ready.push_back(entry);
            return Offer::Ready;
        }
        state.held.push_back(entry);
        Offer::Held
    }

    /// Hands the next ready message to a member.
    pub(crate) fn take(&mut self) -> Option<Entry<H>> {
        let entry = self.ready.pop_front()?;
        if let Some(KeyState { head: Some((_, head)), .. }) = self.keys.get_mut(&entry.message.key) {
            *head = Head::InFlight;
        }
        Some(entry)
    }

    /// Whether `id` is the head of `key` and with a member.
    pub(crate) fn is_in_flight(&self, key: &str, id: &str) -> bool {
        matches!(self.keys.get(key), Some(KeyState { head: Some((head, Head::InFlight)), .. }) if head == id)
    }

    /// The head `id` of `key` was acked. Returns whether a message became ready.
    pub(crate) fn acked(&mut self, key: &str, id: &str) -> bool {
        if !self.is_in_flight(key, id) {
            return false;
        }
        if let Some(state) = self.keys.get_mut(key) {
            state.head = None;
        }
        self.release(key)
    }

    /// The head `id` of `key` was nacked, to come back no sooner than `due`. Returns the held
    /// messages, which the caller sends after the head copy, in order; `None` if `id` is not
    /// the key's head with a member.
    pub(crate) fn nacked(&mut self, key: &str, id: &str, due: u64) -> Option<Vec<Entry<H>>> {
        if !self.is_in_flight(key, id) {
            return None;
        }
        let state = self.keys.get_mut(key)?;
        state.head = None;
        let held: Vec<Entry<H>> = state.held.drain(..).collect();
        let mut away: VecDeque<String> = VecDeque::with_capacity(1 + held.len() + state.away.len());
        away.push_back(id.to_owned());
        away.extend(held.iter().map(|e| e.id.clone()));
        away.extend(state.away.drain(..));
        state.away = away;
        state.due = due;
        Some(held)
    }

    /// The head `id` of `key` was dropped unsettled and requeued: the broker hands it back.
    pub(crate) fn dropped(&mut self, key: &str, id: &str) {
        if self.is_in_flight(key, id)
            && let Some(KeyState { head: Some((_, head)), .. }) = self.keys.get_mut(key)
        {
            *head = Head::Returning;
        }
    }

    /// The channel went away and the broker requeued everything it had handed out: forget it,
    /// but remember which messages are away, as they still come back in their order.
    pub(crate) fn reset(&mut self) {
        self.ready.clear();
        self.keys.retain(|_, state| {
            state.head = None;
            state.held.clear();
            !state.away.is_empty()
        });
    }

    fn release(&mut self, key: &str) -> bool {
        let Some(state) = self.keys.get_mut(key) else { return false };
        match state.held.pop_front() {
            Some(next) => {
                state.head = Some((next.id.clone(), Head::Ready));
                self.ready.push_back(next);
                true
            }
            None => {
                if state.away.is_empty() {
                    self.keys.remove(key);
                }
                false
            }
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.ready.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn entry(id: &str, key: &str) -> Entry<()> {
        Entry { id: id.to_owned(), attempt: 1, not_before: None, message: Message::new(key, id.to_owned()), handle: () }
    }

    fn delayed(id: &str, key: &str, not_before: u64) -> Entry<()> {
        Entry { not_before: Some(not_before), ..entry(id, key) }
    }

    fn take_id(gate: &mut Gate<()>) -> Option<String> {
        gate.take().map(|e| e.id)
    }

    /// Offers `entry` and describes the outcome: "ready", "held" or "forward <id> <due>".
    fn offer(gate: &mut Gate<()>, entry: Entry<()>, now: u64) -> String {
        match gate.offer(entry, now) {
            Offer::Ready => "ready".to_owned(),
            Offer::Held => "held".to_owned(),
            Offer::Forward(e, due) => format!("forward {} {due}", e.id),
        }
    }

    #[test]
    fn one_message_per_key_at_a_time() {
        let mut g = Gate::new();
        for (id, key, outcome) in [("1", "a", "ready"), ("2", "a", "held"), ("3", "b", "ready"), ("4", "a", "held")] {
            assert_eq!(offer(&mut g, entry(id, key), NOW), outcome, "{id}");
        }
        assert_eq!(take_id(&mut g).as_deref(), Some("1"));
        assert_eq!(take_id(&mut g).as_deref(), Some("3"));
        assert_eq!(take_id(&mut g), None, "2 waits for 1");
        assert!(g.acked("a", "1"));
        assert_eq!(take_id(&mut g).as_deref(), Some("2"));
        assert!(!g.acked("a", "1"), "a stale ack changes nothing");
        assert!(g.acked("a", "2"));
        assert_eq!(take_id(&mut g).as_deref(), Some("4"));
        assert!(!g.acked("a", "4"));
        assert!(!g.acked("b", "3"));
        assert!(g.is_empty());
    }

    #[test]
    fn a_nack_sends_the_key_away_in_order_and_other_keys_flow_on() {
        let mut g = Gate::new();
        offer(&mut g, entry("1", "a"), NOW);
        offer(&mut g, entry("2", "a"), NOW);
        assert_eq!(take_id(&mut g).as_deref(), Some("1"));
        let held = g.nacked("a", "1", NOW + 500).expect("1 is in flight");
        assert_eq!(held.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["2"]);
        // A later message of the key follows them; another key is untouched.
        assert_eq!(offer(&mut g, entry("3", "a"), NOW), format!("forward 3 {}", NOW + 500));
        assert_eq!(offer(&mut g, entry("4", "b"), NOW), "ready");
        assert_eq!(take_id(&mut g).as_deref(), Some("4"));
        assert!(!g.acked("b", "4"));
        // Out of turn, or early, they go round again.
        assert_eq!(offer(&mut g, entry("2", "a"), NOW + 600), format!("forward 2 {}", NOW + 500));
        assert_eq!(offer(&mut g, delayed("1", "a", NOW + 500), NOW + 100), format!("forward 1 {}", NOW + 500));
        // In turn and due, each comes in, the next held behind it.
        assert_eq!(offer(&mut g, delayed("1", "a", NOW + 500), NOW + 500), "ready");
        assert_eq!(offer(&mut g, entry("2", "a"), NOW + 500), "held");
        assert_eq!(offer(&mut g, entry("5", "a"), NOW + 500), format!("forward 5 {}", NOW + 500), "3 is still away");
        assert_eq!(take_id(&mut g).as_deref(), Some("1"));
        assert!(g.acked("a", "1"));
        assert_eq!(take_id(&mut g).as_deref(), Some("2"));
        assert!(!g.acked("a", "2"), "3 is away: nothing is ready");
        assert_eq!(offer(&mut g, entry("3", "a"), NOW + 600), "ready");
        assert_eq!(take_id(&mut g).as_deref(), Some("3"));
        assert!(!g.acked("a", "3"));
        assert_eq!(offer(&mut g, entry("5", "a"), NOW + 600), "ready");
        assert_eq!(take_id(&mut g).as_deref(), Some("5"));
        assert!(!g.acked("a", "5"));
        assert!(g.is_empty());
    }

    #[test]
    fn a_second_nack_sends_the_head_away_before_its_followers() {
        let mut g = Gate::new();
        offer(&mut g, entry("1", "a"), NOW);
        take_id(&mut g);
        g.nacked("a", "1", NOW);
        assert_eq!(offer(&mut g, entry("2", "a"), NOW), format!("forward 2 {NOW}"));
        assert_eq!(offer(&mut g, entry("1", "a"), NOW), "ready");
        take_id(&mut g);
        assert!(g.nacked("a", "1", NOW + 9).expect("in flight").is_empty());
        assert_eq!(offer(&mut g, entry("2", "a"), NOW + 9), format!("forward 2 {}", NOW + 9), "1 leads again");
        assert_eq!(offer(&mut g, entry("1", "a"), NOW + 9), "ready");
    }

    #[test]
    fn a_dropped_head_comes_back_first() {
        let mut g = Gate::new();
        offer(&mut g, entry("1", "a"), NOW);
        offer(&mut g, entry("2", "a"), NOW);
        take_id(&mut g);
        g.dropped("a", "1");
        assert_eq!(take_id(&mut g), None);
        assert_eq!(offer(&mut g, entry("1", "a"), NOW), "ready");
        assert_eq!(take_id(&mut g).as_deref(), Some("1"));
        assert!(g.acked("a", "1"));
        assert_eq!(take_id(&mut g).as_deref(), Some("2"));
    }

    #[test]
    fn a_delayed_message_of_an_unknown_key_leads_it_until_due() {
        let mut g = Gate::new();
        assert_eq!(offer(&mut g, delayed("1", "a", NOW + 50), NOW), format!("forward 1 {}", NOW + 50));
        assert_eq!(offer(&mut g, entry("2", "a"), NOW), format!("forward 2 {}", NOW + 50));
        assert_eq!(offer(&mut g, delayed("1", "a", NOW + 50), NOW + 50), "ready");
    }

    #[test]
    fn reset_forgets_what_the_broker_requeues_but_not_what_is_away() {
        let mut g = Gate::new();
        offer(&mut g, entry("1", "a"), NOW);
        offer(&mut g, entry("2", "b"), NOW);
        offer(&mut g, entry("3", "b"), NOW);
        take_id(&mut g);
        take_id(&mut g);
        g.nacked("a", "1", NOW + 10);
        g.reset();
        assert_eq!(take_id(&mut g), None);
        assert_eq!(offer(&mut g, entry("2", "b"), NOW), "ready", "b starts afresh");
        assert_eq!(offer(&mut g, entry("4", "a"), NOW), format!("forward 4 {}", NOW + 10), "a is still away");
    }

    #[test]
    fn settling_what_is_not_in_flight_changes_nothing() {
        let mut g = Gate::new();
        offer(&mut g, entry("1", "a"), NOW);
        assert!(!g.acked("a", "1"), "ready, not in flight");
        assert!(g.nacked("a", "1", NOW).is_none());
        take_id(&mut g);
        assert!(g.nacked("a", "7", NOW).is_none());
        assert!(!g.acked("zzz", "9"));
        assert!(g.is_in_flight("a", "1"));
    }
}

//! The window: what one group member holds of its assigned partitions between fetching a
//! message and committing past it. It turns Kafka's contiguous offsets into per-message acks and
//! per-key order, and it does no I/O — the consumer thread commits what it says — so it is tested
//! here without a broker.
//!
//! Every message fetched enters the window. Per key, the earliest unacked message is the *head*:
//! only the head is handed to the member, the later messages of the key are *held* until it is
//! acked. A nacked head waits out its delay in the window (and a dropped one comes back at once),
//! holding back its own key only. Per partition, the commit position is the lowest offset not yet
//! acked: the committed offset never passes an unsettled message, so a crash redelivers it.
//!
//! A partition's state lives from its assignment to its revocation. Each assignment has an
//! *epoch*; a delivery carries the epoch it was made in, and settling a delivery of an earlier
//! epoch changes nothing, so an ack that arrives after a revocation never commits for a partition
//! this member no longer owns.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    time::{Duration, Instant},
};

use weir_core::bus::{Message, TypeFilter, refused_by};

/// The longest nack delay honoured; longer ones are cut to it (an `Instant` cannot hold any
/// `Duration`).
const LONGEST_DELAY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// One delivery: which message of which assignment of which partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Ticket {
    pub partition: i32,
    pub epoch: u64,
    pub offset: i64,
}

/// What the window hands to a member.
pub(crate) struct Taken {
    pub ticket: Ticket,
    pub message: Message,
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Behind an earlier unacked message of its key.
    Held,
    /// The head of its key, in the ready queue.
    Ready,
    /// With the member.
    InFlight,
    /// Nacked; ready again at `until`.
    Delayed { until: Instant },
    /// Done; stays until the commit position passes it.
    Acked,
}

struct Slot {
    message: Message,
    attempt: u32,
    state: State,
}

struct Partition {
    epoch: u64,
    /// Every fetched message the commit position has not passed, by offset.
    slots: BTreeMap<i64, Slot>,
    /// Per key, its unacked offsets in order; the first is the key's head.
    keys: HashMap<String, VecDeque<i64>>,
    /// The offset after the last fetched message.
    next: Option<i64>,
    /// The last commit position handed out for committing.
    committed: Option<i64>,
    /// Whether fetching is paused because the window holds too much of this partition.
    paused: bool,
}

impl Partition {
    fn new(epoch: u64) -> Self {
        Self { epoch, slots: BTreeMap::new(), keys: HashMap::new(), next: None, committed: None, paused: false }
    }

    /// The offset to commit: the lowest one not acked, or past everything fetched.
    fn position(&self) -> Option<i64> {
        self.slots.first_key_value().map(|(offset, _)| *offset).or(self.next)
    }

    /// Drops the acked prefix: the commit position moves past it.
    fn trim(&mut self) {
        while let Some(entry) = self.slots.first_entry() {
            if entry.get().state != State::Acked {
                break;
            }
            entry.remove();
        }
    }
}

/// Why a settle changed nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stale {
    /// The partition was revoked (or reassigned) since the delivery: its new owner redelivers it.
    Revoked,
    /// The delivery was settled already.
    Settled,
}

pub(crate) struct Window {
    partitions: HashMap<i32, Partition>,
    ready: VecDeque<Ticket>,
    delayed: BTreeSet<(Instant, Ticket)>,
    epochs: u64,
    /// A filtered member's wish: refused messages are acked here without being handed out.
    wants: Option<TypeFilter>,
}

impl Window {
    pub(crate) fn new(wants: Option<TypeFilter>) -> Self {
        Self { partitions: HashMap::new(), ready: VecDeque::new(), delayed: BTreeSet::new(), epochs: 0, wants }
    }

    /// The member was assigned `partitions`: each starts a new epoch with nothing in it.
    pub(crate) fn assign(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.epochs += 1;
            self.partitions.insert(*partition, Partition::new(self.epochs));
        }
    }

    /// The member loses `partitions`. Returns the commit position of each one it fetched from:
    /// the contiguously acked prefix (also when committed before, as that asynchronous commit
    /// may have failed unseen). Everything else of them is forgotten, to be redelivered by the
    /// next owner.
    pub(crate) fn revoke(&mut self, partitions: &[i32]) -> Vec<(i32, i64)> {
        let mut commits = Vec::new();
        for partition in partitions {
            if let Some(state) = self.partitions.remove(partition)
                && let Some(position) = state.position()
            {
                commits.push((*partition, position));
            }
        }
        let partitions = &self.partitions;
        let live = |ticket: &Ticket| partitions.get(&ticket.partition).is_some_and(|p| p.epoch == ticket.epoch);
        self.ready.retain(live);
        self.delayed.retain(|(_, ticket)| live(ticket));
        commits
    }

    /// A message was fetched. Returns whether one became ready for the member.
    pub(crate) fn receive(&mut self, partition: i32, offset: i64, message: Message) -> bool {
        // A message fetched before its assignment was seen (librdkafka does not do that) starts
        // the partition's epoch rather than being dropped.
        let epochs = &mut self.epochs;
        let state = self.partitions.entry(partition).or_insert_with(|| {
            *epochs += 1;
            Partition::new(*epochs)
        });
        if state.next.is_some_and(|next| offset < next) {
            // Fetched again (a re-fetch after a seek): the window has it already, or has
            // committed past it.
            return false;
        }
        state.next = Some(offset + 1);
        let queue = state.keys.entry(message.key.clone()).or_default();
        queue.push_back(offset);
        let head = queue.len() == 1;
        state.slots.insert(offset, Slot { message, attempt: 1, state: State::Held });
        let ticket = Ticket { partition, epoch: state.epoch, offset };
        head && self.make_ready(ticket)
    }

    /// Hands out the next ready message, first readying the nacked ones whose delay is over.
    pub(crate) fn take(&mut self, now: Instant) -> Option<Taken> {
        self.promote(now);
        while let Some(ticket) = self.ready.pop_front() {
            let Some(slot) = self.slot_mut(ticket) else { continue };
            if slot.state != State::Ready {
                continue;
            }
            slot.state = State::InFlight;
            return Some(Taken { ticket, message: slot.message.clone(), attempt: slot.attempt });
        }
        None
    }

    /// When the earliest nacked message becomes ready.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.delayed.first().map(|(until, _)| *until)
    }

    /// The member acked a delivery. Returns whether a message became ready.
    pub(crate) fn ack(&mut self, ticket: Ticket) -> Result<bool, Stale> {
        self.in_flight(ticket)?;
        let Some(state) = self.partitions.get_mut(&ticket.partition) else { return Err(Stale::Revoked) };
        let Some(slot) = state.slots.get_mut(&ticket.offset) else { return Err(Stale::Settled) };
        slot.state = State::Acked;
        let key = slot.message.key.clone();
        let next = match state.keys.get_mut(&key) {
            Some(queue) => {
                // Only a head is ever in flight, so the acked message is its key's first.
                queue.retain(|offset| *offset != ticket.offset);
                let next = queue.front().copied();
                if next.is_none() {
                    state.keys.remove(&key);
                }
                next
            }
            None => None,
        };
        state.trim();
        Ok(match next {
            Some(offset) => self.make_ready(Ticket { offset, ..ticket }),
            None => false,
        })
    }

    /// The member nacked a delivery: it is handed out again, one attempt higher, once `delay` has
    /// passed; until then the later messages of its key wait.
    pub(crate) fn nack(&mut self, ticket: Ticket, delay: Duration, now: Instant) -> Result<(), Stale> {
        self.in_flight(ticket)?;
        let until = now + delay.min(LONGEST_DELAY);
        if let Some(slot) = self.slot_mut(ticket) {
            slot.attempt = slot.attempt.saturating_add(1);
            slot.state = State::Delayed { until };
        }
        self.delayed.insert((until, ticket));
        Ok(())
    }

    /// The commit position of every partition that moved since its last commit, now marked
    /// committed.
    pub(crate) fn due_commits(&mut self) -> Vec<(i32, i64)> {
        let mut commits = Vec::new();
        for (partition, state) in &mut self.partitions {
            if let Some(position) = state.position()
                && state.committed != Some(position)
            {
                state.committed = Some(position);
                commits.push((*partition, position));
            }
        }
        commits
    }

    /// A commit of `partition` failed: commit its position again next time.
    pub(crate) fn commit_failed(&mut self, partition: i32) {
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.committed = None;
        }
    }

    /// The partitions this member owns: assigned and not revoked since.
    pub(crate) fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    /// How many messages of `partition` at or above `from` this member acked while the commit
    /// position could not pass them (an earlier message of the partition is unsettled): settled,
    /// though the broker's committed offset does not show it yet.
    pub(crate) fn acked_from(&self, partition: i32, from: i64) -> u64 {
        self.partitions
            .get(&partition)
            .map_or(0, |state| state.slots.range(from..).filter(|(_, slot)| slot.state == State::Acked).count() as u64)
    }

    /// Partitions to pause (the window holds `limit` messages of them or more) and to resume
    /// (they fell below half of it), now marked so.
    pub(crate) fn flow(&mut self, limit: usize) -> (Vec<i32>, Vec<i32>) {
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        for (partition, state) in &mut self.partitions {
            let held = state.slots.len();
            if !state.paused && held >= limit {
                state.paused = true;
                pause.push(*partition);
            } else if state.paused && held < limit / 2 {
                state.paused = false;
                resume.push(*partition);
            }
        }
        (pause, resume)
    }

    /// Whether fetching of any partition is paused.
    pub(crate) fn any_paused(&self) -> bool {
        self.partitions.values().any(|state| state.paused)
    }

    fn in_flight(&self, ticket: Ticket) -> Result<(), Stale> {
        let state = self.partitions.get(&ticket.partition).filter(|state| state.epoch == ticket.epoch);
        let Some(state) = state else { return Err(Stale::Revoked) };
        match state.slots.get(&ticket.offset) {
            Some(slot) if slot.state == State::InFlight => Ok(()),
            _ => Err(Stale::Settled),
        }
    }

    fn slot_mut(&mut self, ticket: Ticket) -> Option<&mut Slot> {
        let state = self.partitions.get_mut(&ticket.partition).filter(|state| state.epoch == ticket.epoch)?;
        state.slots.get_mut(&ticket.offset)
    }

    /// Makes a key's new head ready — or, when the member does not want its type, acks it on
    /// the spot and moves on to the next of the key. Returns whether a message became ready.
    fn make_ready(&mut self, ticket: Ticket) -> bool {
        let wants = self.wants.clone();
        let Some(slot) = self.slot_mut(ticket) else { return false };
        let refused = wants.is_some_and(|wants| refused_by(wants.as_ref(), &slot.message));
        slot.state = State::InFlight;
        if refused {
            return self.ack(ticket).unwrap_or(false);
        }
        slot.state = State::Ready;
        self.ready.push_back(ticket);
        true
    }

    fn promote(&mut self, now: Instant) {
        while let Some(&(until, ticket)) = self.delayed.first() {
            if until > now {
                break;
            }
            self.delayed.pop_first();
            if let Some(slot) = self.slot_mut(ticket)
                && slot.state == (State::Delayed { until })
            {
                slot.state = State::Ready;
                self.ready.push_back(ticket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const P: i32 = 0;

    fn window() -> Window {
        let mut w = Window::new(None);
        w.assign(&[P, 1]);
        w
    }

    fn receive(w: &mut Window, partition: i32, offset: i64, key: &str) -> bool {
        w.receive(partition, offset, Message::new(key, format!("{key}@{offset}")))
    }

    fn take(w: &mut Window) -> Option<(i64, u32)> {
        w.take(Instant::now()).map(|t| (t.ticket.offset, t.attempt))
    }

    fn ticket(w: &Window, partition: i32, offset: i64) -> Ticket {
        Ticket { partition, epoch: w.partitions[&partition].epoch, offset }
    }

    #[test]
    fn one_message_per_key_at_a_time() {
        let mut w = window();
        assert!(receive(&mut w, P, 0, "a"));
        assert!(!receive(&mut w, P, 1, "a"), "held behind 0");
        assert!(receive(&mut w, P, 2, "b"));
        assert_eq!(take(&mut w), Some((0, 1)));
        assert_eq!(take(&mut w), Some((2, 1)));
        assert_eq!(take(&mut w), None, "1 waits for 0");
        assert_eq!(w.ack(ticket(&w, P, 0)), Ok(true));
        assert_eq!(take(&mut w), Some((1, 1)));
    }

    #[test]
    fn commits_never_pass_an_unsettled_message() {
        let mut w = window();
        for (offset, key) in [(10, "a"), (11, "b"), (12, "c")] {
            receive(&mut w, P, offset, key);
        }
        assert_eq!(w.due_commits(), vec![(P, 10)]);
        for _ in 0..3 {
            take(&mut w);
        }
        w.ack(ticket(&w, P, 11)).unwrap();
        w.ack(ticket(&w, P, 12)).unwrap();
        assert_eq!(w.due_commits(), vec![], "10 is unsettled: the position stays");
        assert_eq!(w.acked_from(P, 10), 2, "settled above the position");
        w.ack(ticket(&w, P, 10)).unwrap();
        assert_eq!(w.due_commits(), vec![(P, 13)], "past everything fetched");
        assert_eq!(w.acked_from(P, 10), 0);
    }

    #[test]
    fn nack_holds_only_its_key_for_its_delay() {
        let mut w = window();
        let now = Instant::now();
        receive(&mut w, P, 0, "a");
        receive(&mut w, P, 1, "a");
        receive(&mut w, P, 2, "b");
        assert_eq!(take(&mut w), Some((0, 1)));
        w.nack(ticket(&w, P, 0), Duration::from_secs(5), now).unwrap();
        assert_eq!(w.next_due(), Some(now + Duration::from_secs(5)));
        assert_eq!(take(&mut w), Some((2, 1)), "other keys flow on");
        assert_eq!(w.take(now + Duration::from_secs(4)).map(|t| t.ticket.offset), None, "a waits");
        let again = w.take(now + Duration::from_secs(5)).unwrap();
        assert_eq!((again.ticket.offset, again.attempt), (0, 2));
        assert_eq!(w.next_due(), None);
        w.ack(again.ticket).unwrap();
        assert_eq!(take(&mut w), Some((1, 1)));
        w.ack(ticket(&w, P, 2)).unwrap();
        assert_eq!(w.due_commits(), vec![(P, 1)], "0 and 2 acked, 1 in flight");
    }

    #[test]
    fn an_endless_delay_is_cut_not_a_panic() {
        let mut w = window();
        let now = Instant::now();
        receive(&mut w, P, 0, "a");
        take(&mut w);
        w.nack(ticket(&w, P, 0), Duration::MAX, now).unwrap();
        assert_eq!(w.next_due(), Some(now + LONGEST_DELAY));
    }

    #[test]
    fn a_zero_nack_comes_back_at_once() {
        let mut w = window();
        receive(&mut w, P, 0, "a");
        take(&mut w);
        w.nack(ticket(&w, P, 0), Duration::ZERO, Instant::now()).unwrap();
        assert_eq!(take(&mut w), Some((0, 2)));
    }

    #[test]
    fn settling_twice_or_after_revocation_changes_nothing() {
        let mut w = window();
        receive(&mut w, P, 0, "a");
        receive(&mut w, 1, 0, "b");
        take(&mut w);
        take(&mut w);
        let old = ticket(&w, P, 0);
        assert_eq!(w.ack(old), Ok(false));
        assert_eq!(w.ack(old), Err(Stale::Settled));
        assert_eq!(w.revoke(&[1]), vec![(1, 0)], "nothing of 1 acked: its position is its first");
        assert_eq!(w.ack(Ticket { partition: 1, epoch: 2, offset: 0 }), Err(Stale::Revoked));
        w.assign(&[1]);
        receive(&mut w, 1, 0, "b");
        assert_eq!(w.ack(Ticket { partition: 1, epoch: 2, offset: 0 }), Err(Stale::Revoked), "an old epoch");
        assert_eq!(take(&mut w), Some((0, 1)), "the new owner's delivery");
    }

    #[test]
    fn revoke_commits_the_acked_prefix_and_forgets_the_rest() {
        let mut w = window();
        for offset in 0..4 {
            receive(&mut w, P, offset, &format!("k{offset}"));
        }
        for _ in 0..4 {
            take(&mut w);
        }
        w.ack(ticket(&w, P, 0)).unwrap();
        w.ack(ticket(&w, P, 1)).unwrap();
        w.ack(ticket(&w, P, 3)).unwrap();
        w.nack(ticket(&w, P, 2), Duration::from_secs(60), Instant::now()).unwrap();
        assert_eq!(w.revoke(&[P, 1]), vec![(P, 2)], "up to the nacked 2; 1 had nothing");
        assert_eq!(w.next_due(), None, "the delay went with the partition");
        assert_eq!(take(&mut w), None);
        assert!(w.due_commits().is_empty());
    }

    #[test]
    fn a_member_owns_its_partitions_from_assignment_to_revocation() {
        let mut w = window();
        let owned = |w: &Window| {
            let mut partitions: Vec<i32> = w.partitions().collect();
            partitions.sort_unstable();
            partitions
        };
        assert_eq!(owned(&w), vec![P, 1]);
        w.revoke(&[P]);
        assert_eq!(owned(&w), vec![1]);
        w.assign(&[5]);
        assert_eq!(owned(&w), vec![1, 5]);
    }

    #[test]
    fn refetched_messages_are_ignored() {
        let mut w = window();
        receive(&mut w, P, 5, "a");
        assert!(!receive(&mut w, P, 5, "a"));
        assert!(!receive(&mut w, P, 4, "z"));
        assert_eq!(take(&mut w), Some((5, 1)));
        assert_eq!(take(&mut w), None);
    }

    #[test]
    fn refused_types_are_acked_in_order_with_their_key() {
        let wants: TypeFilter = Arc::new(|kind: &str| kind == "wanted");
        let mut w = Window::new(Some(wants));
        w.assign(&[P]);
        let typed = |key: &str, kind: &str| Message::new(key, "x").with_header("ce-type", kind);
        assert!(!w.receive(P, 0, typed("a", "other")), "acked on the spot");
        assert!(w.receive(P, 1, typed("b", "wanted")));
        assert!(!w.receive(P, 2, typed("b", "other")), "held behind 1");
        assert!(w.receive(P, 3, Message::new("c", "untyped")));
        assert_eq!(take(&mut w), Some((1, 1)));
        assert_eq!(take(&mut w), Some((3, 1)));
        assert_eq!(w.ack(ticket(&w, P, 1)), Ok(false), "2 refused, acked on release");
        assert_eq!(w.due_commits(), vec![(P, 3)]);
    }

    #[test]
    fn flow_pauses_a_full_partition_and_resumes_it_at_half() {
        let mut w = window();
        for offset in 0..4 {
            receive(&mut w, P, offset, "a");
        }
        assert!(!w.any_paused());
        assert_eq!(w.flow(4), (vec![P], vec![]));
        assert_eq!(w.flow(4), (vec![], vec![]), "already paused");
        assert!(w.any_paused());
        for offset in 0..3 {
            take(&mut w);
            w.ack(ticket(&w, P, offset)).unwrap();
        }
        assert_eq!(w.flow(4), (vec![], vec![P]));
        assert!(!w.any_paused());
    }
}

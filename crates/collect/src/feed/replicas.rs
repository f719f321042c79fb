//! Redundant capture: the replicas of one symbol group, and the rule that keeps them from going
//! dark together by the collector's own doing.
//!
//! With `collect --redundancy N` every group of symbols is subscribed on N connections
//! (*replicas* 0..N): separate sockets, connection ids and sessions. What the replicas of a group
//! share is a [`Gate`] (and, for the CPU's sake, their books: [`super::shared_books`]): a replica that starts a reconnect (its symbols dark until the
//! new session verifies them) or a resubscription of one symbol (that symbol dark until its new
//! snapshot verifies) asks the gate first. What must always hold:
//! - a replica does not *start* a reconnect while another replica of its group is reconnecting
//!   or resubscribing anything, nor a resubscription of a symbol while another replica is
//!   reconnecting or resubscribing that symbol: it waits;
//! - the wait is bounded: another replica's work older than [`Gate::deadline`] no longer holds
//!   anyone (a replica stuck elsewhere, unreachable, rate-limited, never holds the others down);
//! - deciding and starting are one step ([`Gate::try_start`]), so two replicas asking at the same
//!   instant never both get "go";
//! - a replica waits only on *others*: its own work never blocks itself.
//!
//! The gate does no I/O and reads no clock: it is fed the instants, so tests drive it on tokio's
//! paused clock. Replica k also starts `k × stagger` after replica 0 ([`start_delay`], jittered),
//! so that the group's connects are spread out from the first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::rng::Rng;

/// The default bound on how long one replica's work can hold the others.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// The default delay between the first connects of consecutive replicas.
pub const DEFAULT_STAGGER: Duration = Duration::from_secs(2);
/// The largest `--redundancy`.
pub const MAX_REDUNDANCY: usize = 4;

/// What a replica is about to do that darkens some of its streams.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// Open a new connection: every symbol of the group is dark until verified on it.
    Reconnect,
    /// Resubscribe this symbol: it is dark on this replica until its new snapshot verifies.
    Resubscribe(String),
}

/// The gate's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead: the work is recorded as started.
    Go,
    /// Another replica is busy with conflicting work: ask again at this instant at the latest
    /// (or earlier, when [`SharedGate::changed`] fires).
    WaitUntil(Instant),
}

/// One replica's work in progress.
#[derive(Debug, Default, Clone)]
struct Busy {
    /// Reconnecting since.
    reconnect: Option<Instant>,
    /// Symbols being resubscribed, since.
    resubscribe: HashMap<String, Instant>,
}

/// The replicas' work in progress, and the rule (see the module doc).
#[derive(Debug, Clone)]
pub struct Gate {
    deadline: Duration,
    busy: Vec<Busy>,
}

impl Gate {
    /// A gate for `replicas` replicas whose work holds the others for at most `deadline`.
    pub fn new(replicas: usize, deadline: Duration) -> Self {
        Gate {
            deadline,
            busy: vec![Busy::default(); replicas.max(1)],
        }
    }

    /// How long one replica's work can hold the others.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// May `replica` start `work` at `now`? On [`Decision::Go`] the work is recorded as started
    /// at `now` (until [`Gate::finish`]); otherwise nothing changes.
    pub fn try_start(&mut self, replica: usize, work: &Work, now: Instant) -> Decision {
        let mut until: Option<Instant> = None;
        for (other, busy) in self.busy.iter().enumerate() {
            if other == replica {
                continue;
            }
            let mut since: Vec<Instant> = busy.reconnect.into_iter().collect();
            match work {
                Work::Reconnect => since.extend(busy.resubscribe.values().copied()),
                Work::Resubscribe(symbol) => since.extend(busy.resubscribe.get(symbol).copied()),
            }
            for started in since {
                let ends = started + self.deadline;
                if now < ends {
                    until = Some(until.map_or(ends, |u| u.min(ends)));
                }
            }
        }
        if let Some(until) = until {
            return Decision::WaitUntil(until);
        }
        if let Some(busy) = self.busy.get_mut(replica) {
            match work {
                Work::Reconnect => busy.reconnect = Some(now),
                Work::Resubscribe(symbol) => {
                    busy.resubscribe.insert(symbol.clone(), now);
                }
            }
        }
        Decision::Go
    }

    /// `replica` finished `work` (its streams are verified again, or it gave up): it no longer
    /// holds anyone. Finishing work not started does nothing.
    pub fn finish(&mut self, replica: usize, work: &Work) {
        if let Some(busy) = self.busy.get_mut(replica) {
            match work {
                Work::Reconnect => busy.reconnect = None,
                Work::Resubscribe(symbol) => {
                    busy.resubscribe.remove(symbol);
                }
            }
        }
    }

    /// `replica`'s connection ended: every resubscription it had under way ended with it (its
    /// reconnect, if any, is still under way).
    pub fn connection_ended(&mut self, replica: usize) {
        if let Some(busy) = self.busy.get_mut(replica) {
            busy.resubscribe.clear();
        }
    }

    /// Whether `replica` has `work` under way.
    pub fn is_busy(&self, replica: usize, work: &Work) -> bool {
        self.busy.get(replica).is_some_and(|b| match work {
            Work::Reconnect => b.reconnect.is_some(),
            Work::Resubscribe(s) => b.resubscribe.contains_key(s),
        })
    }
}

/// A [`Gate`] shared by the connection tasks of one group, with a signal when work finishes.
#[derive(Debug)]
pub struct SharedGate {
    gate: Mutex<Gate>,
    changed: Notify,
    /// The group's stamps ([`super::session::GroupStamps`]).
    stamps: Arc<super::session::GroupStamps>,
}

impl SharedGate {
    /// A shared gate for `replicas` replicas.
    pub fn new(replicas: usize, deadline: Duration) -> Self {
        SharedGate {
            gate: Mutex::new(Gate::new(replicas, deadline)),
            changed: Notify::new(),
            stamps: Arc::default(),
        }
    }

    /// The stamps the group's replicas share ([`super::session::GroupStamps`]).
    pub fn stamps(&self) -> Arc<super::session::GroupStamps> {
        Arc::clone(&self.stamps)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Gate) -> T) -> T {
        // A poisoned lock only means another task panicked mid-update of plain data: the
        // gate's state is still a valid (if stale) set of instants, and the deadline bounds it.
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut gate)
    }

    /// [`Gate::try_start`].
    pub fn try_start(&self, replica: usize, work: &Work, now: Instant) -> Decision {
        self.with(|g| g.try_start(replica, work, now))
    }

    /// [`Gate::finish`], waking the replicas that wait.
    pub fn finish(&self, replica: usize, work: &Work) {
        let was = self.with(|g| {
            let was = g.is_busy(replica, work);
            g.finish(replica, work);
            was
        });
        if was {
            self.changed.notify_waiters();
        }
    }

    /// [`Gate::connection_ended`], waking the replicas that wait.
    pub fn connection_ended(&self, replica: usize) {
        self.with(|g| g.connection_ended(replica));
        self.changed.notify_waiters();
    }

    /// Whether `replica` has `work` under way.
    pub fn is_busy(&self, replica: usize, work: &Work) -> bool {
        self.with(|g| g.is_busy(replica, work))
    }

    /// Completes when some replica finished some work (ask again then).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// How long replica `replica` waits before its first connect: `replica × stagger`, plus up to a
/// quarter of `stagger` of jitter (from `rng`), so that replicas of many groups do not connect in
/// lockstep. Replica 0 starts at once.
pub fn start_delay(replica: usize, stagger: Duration, rng: &mut Rng) -> Duration {
    if replica == 0 || stagger.is_zero() {
        return Duration::ZERO;
    }
    let base = stagger.saturating_mul(u32::try_from(replica).unwrap_or(u32::MAX));
    let spread = u64::try_from((stagger / 4).as_nanos()).unwrap_or(u64::MAX);
    base + Duration::from_nanos(rng.below(spread.max(1)))
}

/// The endpoint of replica `replica`: `urls[replica % urls.len()]`.
pub fn endpoint(urls: &[url::Url], replica: usize) -> Option<&url::Url> {
    if urls.is_empty() {
        None
    } else {
        urls.get(replica % urls.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn sym(s: &str) -> Work {
        Work::Resubscribe(s.to_owned())
    }

    /// One step of a gate script: at `t` seconds, `replica` asks for (or finishes) `work`.
    enum Step {
        Ask(u64, usize, Work, Expect),
        Finish(usize, Work),
        Ended(usize),
    }

    #[derive(Debug, PartialEq)]
    enum Expect {
        Go,
        /// Wait until this many seconds from the start.
        Wait(u64),
    }

    fn run(name: &str, script: Vec<Step>) {
        let start = Instant::now();
        let mut gate = Gate::new(3, 10 * S);
        for (i, step) in script.into_iter().enumerate() {
            match step {
                Step::Ask(t, replica, work, expect) => {
                    let got = match gate.try_start(replica, &work, start + Duration::from_secs(t)) {
                        Decision::Go => Expect::Go,
                        Decision::WaitUntil(at) => Expect::Wait((at - start).as_secs()),
                    };
                    assert_eq!(got, expect, "{name}, step {i}: replica {replica} {work:?}");
                }
                Step::Finish(replica, work) => gate.finish(replica, &work),
                Step::Ended(replica) => gate.connection_ended(replica),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_never_start_darkening_work_together_and_never_wait_past_the_deadline() {
        use Expect::*;
        use Step::*;
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "a reconnect waits for another replica's reconnect",
                vec![
                    Ask(0, 0, Work::Reconnect, Go),
                    Ask(1, 1, Work::Reconnect, Wait(10)),
                    Finish(0, Work::Reconnect),
                    Ask(2, 1, Work::Reconnect, Go),
                ],
            ),
            (
                "one stuck replica holds the others only until the deadline",
                vec![
                    Ask(0, 0, Work::Reconnect, Go),
                    Ask(9, 1, Work::Reconnect, Wait(10)),
                    Ask(10, 1, Work::Reconnect, Go),
                    // And now replica 1 holds replica 0, which is still "reconnecting".
                    Ask(11, 2, Work::Reconnect, Wait(20)),
                ],
            ),
            (
                "a replica's own work never holds itself",
                vec![
                    Ask(0, 0, Work::Reconnect, Go),
                    Ask(1, 0, sym("BTC/USD"), Go),
                    Ask(2, 0, Work::Reconnect, Go),
                ],
            ),
            (
                "resubscriptions of different symbols go together",
                vec![
                    Ask(0, 0, sym("BTC/USD"), Go),
                    Ask(0, 1, sym("ETH/USD"), Go),
                    Ask(1, 1, sym("BTC/USD"), Wait(10)),
                    Finish(0, sym("BTC/USD")),
                    Ask(1, 1, sym("BTC/USD"), Go),
                ],
            ),
            (
                "a reconnect waits for any resubscription of another replica, and the reverse",
                vec![
                    Ask(0, 0, sym("BTC/USD"), Go),
                    Ask(3, 1, Work::Reconnect, Wait(10)),
                    Finish(0, sym("BTC/USD")),
                    Ask(4, 1, Work::Reconnect, Go),
                    Ask(5, 0, sym("ETH/USD"), Wait(14)),
                ],
            ),
            (
                "the earliest of several conflicts' deadlines is when to ask again",
                vec![
                    Ask(0, 0, sym("BTC/USD"), Go),
                    Ask(4, 1, sym("ETH/USD"), Go),
                    Ask(5, 2, Work::Reconnect, Wait(10)),
                    Ask(10, 2, Work::Reconnect, Wait(14)),
                    Ask(14, 2, Work::Reconnect, Go),
                ],
            ),
            (
                "a connection that ends takes its resubscriptions with it",
                vec![
                    Ask(0, 0, sym("BTC/USD"), Go),
                    Ended(0),
                    Ask(1, 1, sym("BTC/USD"), Go),
                ],
            ),
            (
                "finishing work never started changes nothing",
                vec![
                    Ask(0, 0, Work::Reconnect, Go),
                    Finish(1, Work::Reconnect),
                    Finish(0, sym("BTC/USD")),
                    Ask(1, 1, Work::Reconnect, Wait(10)),
                ],
            ),
        ];
        for (name, script) in cases {
            run(name, script);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_replica_is_woken_when_the_other_finishes() {
        let gate = std::sync::Arc::new(SharedGate::new(2, 10 * S));
        assert_eq!(
            gate.try_start(0, &Work::Reconnect, Instant::now()),
            Decision::Go
        );
        let waiter = {
            let gate = std::sync::Arc::clone(&gate);
            tokio::spawn(async move {
                loop {
                    match gate.try_start(1, &Work::Reconnect, Instant::now()) {
                        Decision::Go => return Instant::now(),
                        Decision::WaitUntil(at) => tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = gate.changed() => {}
                        },
                    }
                }
            })
        };
        let start = Instant::now();
        tokio::time::sleep(3 * S).await;
        gate.finish(0, &Work::Reconnect);
        let went = waiter.await.unwrap();
        assert_eq!(went - start, 3 * S, "woken by the finish, not the deadline");
        assert!(gate.is_busy(1, &Work::Reconnect));
    }

    #[test]
    fn replicas_start_staggered_with_bounded_jitter_and_use_endpoints_in_turn() {
        let mut rng = Rng::derive(7, "stagger");
        assert_eq!(start_delay(0, 2 * S, &mut rng), Duration::ZERO);
        for k in 1..4usize {
            let d = start_delay(k, 2 * S, &mut rng);
            let base = 2 * S * k as u32;
            assert!(d >= base && d < base + S / 2, "replica {k}: {d:?}");
        }
        let urls: Vec<url::Url> = ["ws://a/v2", "ws://b/v2"]
            .iter()
            .map(|u| u.parse().unwrap())
            .collect();
        let hosts: Vec<&str> = (0..4)
            .map(|k| endpoint(&urls, k).unwrap().host_str().unwrap())
            .collect();
        assert_eq!(hosts, ["a", "b", "a", "b"]);
        assert_eq!(endpoint(&[], 1), None);
    }
}

//! Faults on demand: what a connection does wrong, and when.
//!
//! Each fault has its own setting, so a test can ask for exactly one. Counts are per connection
//! and count the book *updates* sent on it (snapshots, acks and heartbeats do not count):
//!
//! | setting | effect |
//! |---|---|
//! | `drop_after: N` | after the N-th update, the TCP connection is closed without a WebSocket close |
//! | `drop_rate: p` | after each update, the same with probability p |
//! | `silence_after: N` | after the N-th update, nothing at all is sent for `silence_for` (heartbeats included) |
//! | `silence_every: T` | the same, starting every T since the connection opened |
//! | `lose_after: N` | the first update after N updates that changes the checksum is withheld |
//! | `lose_rate: p` | each update that changes the checksum is withheld with probability p |
//! | `garbage_after: N` | after the N-th update, a frame that is not JSON ([`GARBAGE_FRAME`]) |
//! | `unknown_channel_after: N` | after the N-th update, a frame of a channel no client knows ([`UNKNOWN_CHANNEL_FRAME`]) |
//! | `reject: [symbols]` | subscriptions to these symbols fail with Kraken's `Currency pair not supported` |
//! | `connections: N` | the per-connection faults above apply to the first N connections only |
//! | `silence_conn: N` | the silence faults apply to connection N (accept order) only; the others go on |
//! | `silence_at: T` | go silent once, T after the connection opened (then every `silence_every`, if set) |
//! | `drop_every: T` | every T, drop one live connection, taking them in turn ([`DropRotation`]) |
//!
//! `drop_every` is the one fault of the server rather than of a connection: every T the server
//! drops the live connection that follows the last one dropped in accept order (wrapping to the
//! oldest), so that with two client connections they are dropped alternately and one is always
//! up (its replacement, accepted later, comes last in the turn).
//!
//! A withheld ("lost") update has been applied to the market's book, so the client's book
//! silently diverges and its next checksum for that symbol fails. Only updates that change the
//! checksum (the top ten levels) are withheld, so the loss is always detectable. While a
//! connection is silent it does not read requests either (a stalled connection), and the book
//! frames the market produces meanwhile are discarded, as a stalled exchange connection loses
//! them: a client that waits out the silence sees checksum failures afterwards.
//!
//! Random faults draw from a generator seeded with the run's seed and the connection number, so a
//! run is reproducible. What must always hold: with no fault set, a connection behaves exactly
//! as Kraken does.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::market::{BookFrame, ConnId};
use super::rng::Rng;

/// The frame sent by the `garbage` fault: not JSON (an HTML error page, as a proxy would send).
pub const GARBAGE_FRAME: &str = "<html><head><title>502 Bad Gateway</title></head><body>krakenbook simulate: fault: a frame that is not JSON</body></html>";

/// The frame sent by the `unknown_channel` fault: valid JSON of a channel no client subscribed to.
pub const UNKNOWN_CHANNEL_FRAME: &str = r#"{"channel":"krakenbook_fault","type":"update","data":[{"note":"fault: a channel this client does not know"}]}"#;

/// A probability from 0 to 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
pub struct Probability(f64);

impl Probability {
    /// Never.
    pub const NEVER: Probability = Probability(0.0);

    /// `p`, if it is a number from 0 to 1.
    pub fn new(p: f64) -> Option<Self> {
        (0.0..=1.0).contains(&p).then_some(Probability(p))
    }

    /// The probability as a number.
    pub fn get(self) -> f64 {
        self.0
    }

    /// Whether it is above zero.
    pub fn is_set(self) -> bool {
        self.0 > 0.0
    }
}

/// A text that is not a probability.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a probability: give a number from 0 to 1, e.g. 0.001")]
pub struct ProbabilityError(pub String);

impl FromStr for Probability {
    type Err = ProbabilityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<f64>()
            .ok()
            .and_then(Probability::new)
            .ok_or_else(|| ProbabilityError(s.to_owned()))
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which faults to inject (see the module doc). The default injects none.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// Close the connection after this many updates.
    pub drop_after: Option<u64>,
    /// Close the connection after each update with this probability.
    pub drop_rate: Probability,
    /// Go silent after this many updates.
    pub silence_after: Option<u64>,
    /// Go silent every this long, from the connection's start.
    pub silence_every: Option<Duration>,
    /// How long a silence lasts.
    pub silence_for: Duration,
    /// Withhold the first checksum-changing update after this many updates.
    pub lose_after: Option<u64>,
    /// Withhold each checksum-changing update with this probability.
    pub lose_rate: Probability,
    /// Send a frame that is not JSON after this many updates.
    pub garbage_after: Option<u64>,
    /// Send a frame of an unknown channel after this many updates.
    pub unknown_channel_after: Option<u64>,
    /// Symbols whose subscriptions are refused.
    pub reject: Vec<String>,
    /// Apply the per-connection faults to the first this many connections only.
    pub connections: Option<u64>,
    /// Apply the silence faults to this connection (accept order) only.
    pub silence_conn: Option<ConnId>,
    /// Go silent once this long after the connection opened.
    pub silence_at: Option<Duration>,
    /// Drop one live connection every this long, in turn.
    pub drop_every: Option<Duration>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            drop_after: None,
            drop_rate: Probability::NEVER,
            silence_after: None,
            silence_every: None,
            silence_for: Duration::from_secs(6),
            lose_after: None,
            lose_rate: Probability::NEVER,
            garbage_after: None,
            unknown_channel_after: None,
            reject: Vec::new(),
            connections: None,
            silence_conn: None,
            silence_at: None,
            drop_every: None,
        }
    }
}

/// Fault settings that contradict each other.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FaultsError {
    /// A silence that lasts as long as its period never ends.
    #[error(
        "a silence of {silence_for:?} every {every:?} never ends: make the silence shorter than its period"
    )]
    EndlessSilence {
        /// The silence.
        silence_for: Duration,
        /// Its period.
        every: Duration,
    },
    /// A count of zero never triggers.
    #[error("{0} must be at least 1 (it counts updates sent)")]
    Zero(&'static str),
    /// A period of zero would drop every connection at once, forever.
    #[error("drop_every must be above zero (e.g. 20s)")]
    ZeroPeriod,
    /// Connections are numbered from 1.
    #[error("silence_conn must be at least 1 (connections are numbered from 1, in accept order)")]
    NoSuchConnection,
}

impl Faults {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), FaultsError> {
        if let Some(every) = self.silence_every
            && self.silence_for >= every
        {
            return Err(FaultsError::EndlessSilence {
                silence_for: self.silence_for,
                every,
            });
        }
        if self.drop_every.is_some_and(|d| d.is_zero()) {
            return Err(FaultsError::ZeroPeriod);
        }
        if self.silence_conn == Some(0) {
            return Err(FaultsError::NoSuchConnection);
        }
        for (name, n) in [
            ("drop_after", self.drop_after),
            ("silence_after", self.silence_after),
            ("garbage_after", self.garbage_after),
            ("unknown_channel_after", self.unknown_channel_after),
        ] {
            if n == Some(0) {
                return Err(FaultsError::Zero(name));
            }
        }
        Ok(())
    }

    /// Whether the per-connection faults apply to connection `conn`.
    pub fn applies_to(&self, conn: ConnId) -> bool {
        self.connections.is_none_or(|n| conn <= n)
    }

    /// Whether `symbol`'s subscriptions are refused.
    pub fn rejects(&self, symbol: &str) -> bool {
        self.reject.iter().any(|s| s == symbol)
    }
}

/// What to do after an update was sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AfterUpdate {
    /// Close the connection now.
    pub drop: bool,
    /// Go silent now.
    pub silence: bool,
    /// Send [`GARBAGE_FRAME`].
    pub garbage: bool,
    /// Send [`UNKNOWN_CHANNEL_FRAME`].
    pub unknown_channel: bool,
}

/// One connection's fault schedule.
#[derive(Debug)]
pub struct FaultState {
    faults: Faults,
    enabled: bool,
    /// Whether the silence faults apply to this connection.
    silence_enabled: bool,
    rng: Rng,
    updates: u64,
    lost_once: bool,
}

impl FaultState {
    /// The schedule of connection `conn` in a run seeded with `seed`.
    pub fn new(faults: &Faults, conn: ConnId, seed: u64) -> Self {
        FaultState {
            faults: faults.clone(),
            enabled: faults.applies_to(conn),
            silence_enabled: faults.applies_to(conn)
                && faults.silence_conn.is_none_or(|c| c == conn),
            rng: Rng::derive(seed, &format!("connection {conn}")),
            updates: 0,
            lost_once: false,
        }
    }

    /// Updates sent so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Whether to withhold this update (decided before sending it).
    pub fn withhold(&mut self, frame: &BookFrame) -> bool {
        if !self.enabled || !frame.checksum_changed {
            return false;
        }
        if let Some(n) = self.faults.lose_after
            && !self.lost_once
            && self.updates >= n
        {
            self.lost_once = true;
            return true;
        }
        self.faults.lose_rate.is_set() && self.rng.chance(self.faults.lose_rate.get())
    }

    /// Counts a sent update and says which faults fire now.
    pub fn sent_update(&mut self) -> AfterUpdate {
        self.updates += 1;
        if !self.enabled {
            return AfterUpdate::default();
        }
        let n = self.updates;
        let f = &self.faults;
        AfterUpdate {
            drop: f.drop_after == Some(n)
                || (f.drop_rate.is_set() && self.rng.chance(f.drop_rate.get())),
            silence: self.silence_enabled && f.silence_after == Some(n),
            garbage: f.garbage_after == Some(n),
            unknown_channel: f.unknown_channel_after == Some(n),
        }
    }

    /// How long a silence lasts.
    pub fn silence_for(&self) -> Duration {
        self.faults.silence_for
    }

    /// The period of the periodic silence, if this connection has one.
    pub fn silence_every(&self) -> Option<Duration> {
        self.faults.silence_every.filter(|_| self.silence_enabled)
    }

    /// When, after the connection opened, its first timed silence starts, if it has one:
    /// `silence_at`, or else the first period of `silence_every`.
    pub fn first_silence(&self) -> Option<Duration> {
        if !self.silence_enabled {
            return None;
        }
        self.faults.silence_at.or(self.faults.silence_every)
    }
}

/// The `drop_every` fault's turn: which live connection to drop next (see the module doc). No
/// I/O: the server tells it which connections open and close, and asks it at each period.
#[derive(Debug, Default)]
pub struct DropRotation {
    live: std::collections::BTreeSet<ConnId>,
    last: ConnId,
}

impl DropRotation {
    /// Connection `conn` opened.
    pub fn opened(&mut self, conn: ConnId) {
        self.live.insert(conn);
    }

    /// Connection `conn` closed.
    pub fn closed(&mut self, conn: ConnId) {
        self.live.remove(&conn);
    }

    /// The connection to drop now: the first live one after the last dropped, in accept order,
    /// wrapping to the oldest; `None` when none is live.
    pub fn next_victim(&mut self) -> Option<ConnId> {
        let next = self
            .live
            .range(self.last + 1..)
            .next()
            .or_else(|| self.live.iter().next())
            .copied()?;
        self.last = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kraken::BookKind;

    fn frame(changed: bool) -> BookFrame {
        BookFrame {
            symbol: "BTC/USD".into(),
            kind: BookKind::Update,
            checksum: 1,
            checksum_changed: changed,
            text: "{}".into(),
        }
    }

    #[test]
    fn counted_faults_fire_once_at_their_count() {
        let faults = Faults {
            drop_after: Some(5),
            silence_after: Some(2),
            garbage_after: Some(3),
            unknown_channel_after: Some(3),
            ..Faults::default()
        };
        let mut s = FaultState::new(&faults, 1, 0);
        let fired: Vec<AfterUpdate> = (0..7).map(|_| s.sent_update()).collect();
        assert!(fired[1].silence && !fired[0].silence && !fired[2].silence);
        assert!(fired[2].garbage && fired[2].unknown_channel);
        assert!(fired[4].drop);
        assert_eq!(fired.iter().filter(|a| a.drop).count(), 1);
        assert_eq!(fired.iter().filter(|a| a.garbage).count(), 1);
    }

    #[test]
    fn lose_after_withholds_the_first_checksum_changing_update_after_the_count() {
        let faults = Faults {
            lose_after: Some(2),
            ..Faults::default()
        };
        let mut s = FaultState::new(&faults, 1, 0);
        // (checksum changes?, withheld?)
        let script = [
            (true, false),
            (true, false),
            (false, false),
            (true, true),
            (true, false),
        ];
        for (i, (changed, withheld)) in script.into_iter().enumerate() {
            assert_eq!(s.withhold(&frame(changed)), withheld, "update {i}");
            if !withheld {
                s.sent_update();
            }
        }
    }

    #[test]
    fn faults_can_be_limited_to_the_first_connections() {
        let faults = Faults {
            drop_after: Some(1),
            lose_after: Some(0),
            connections: Some(1),
            silence_every: Some(Duration::from_secs(10)),
            ..Faults::default()
        };
        let mut first = FaultState::new(&faults, 1, 0);
        let mut second = FaultState::new(&faults, 2, 0);
        assert!(first.withhold(&frame(true)));
        assert!(first.sent_update().drop);
        assert!(first.silence_every().is_some());
        assert!(!second.withhold(&frame(true)));
        assert!(!second.sent_update().drop);
        assert!(second.silence_every().is_none());
    }

    #[test]
    fn random_faults_follow_their_rate_and_the_seed() {
        let faults = Faults {
            drop_rate: "0.1".parse().unwrap(),
            ..Faults::default()
        };
        let run = |seed| {
            let mut s = FaultState::new(&faults, 3, seed);
            (0..2000)
                .map(|_| s.sent_update().drop)
                .collect::<Vec<bool>>()
        };
        let a = run(1);
        assert_eq!(a, run(1), "the same seed, the same faults");
        assert_ne!(a, run(2));
        let n = a.iter().filter(|&&d| d).count();
        assert!((150..250).contains(&n), "about 10 %: {n}");
    }

    #[test]
    fn drops_take_live_connections_in_turn_so_two_alternate() {
        let mut turn = DropRotation::default();
        assert_eq!(turn.next_victim(), None, "nothing live, nothing dropped");
        // A client with two connections that reconnects each dropped one at once: (open, close
        // before the next drop) per period; the drops alternate between its two streams.
        turn.opened(1);
        turn.opened(2);
        let mut dropped = Vec::new();
        for replacement in 3..9 {
            let victim = turn.next_victim().unwrap();
            dropped.push(victim);
            turn.closed(victim);
            turn.opened(replacement);
        }
        // 1 and 2 are the two replicas; 3 replaces 1, 4 replaces 2, and so on.
        assert_eq!(dropped, [1, 2, 3, 4, 5, 6]);
        // Connections that close by themselves leave the turn; the turn wraps to the oldest.
        let mut turn = DropRotation::default();
        for c in [1, 2, 3] {
            turn.opened(c);
        }
        assert_eq!(turn.next_victim(), Some(1));
        turn.closed(2);
        assert_eq!(turn.next_victim(), Some(3));
        assert_eq!(turn.next_victim(), Some(1), "wraps to the oldest live");
    }

    #[test]
    fn a_silence_can_be_given_to_one_connection_at_a_time_after_it_opened() {
        let faults = Faults {
            silence_conn: Some(2),
            silence_at: Some(Duration::from_secs(5)),
            silence_after: Some(1),
            ..Faults::default()
        };
        let mut first = FaultState::new(&faults, 1, 0);
        let mut second = FaultState::new(&faults, 2, 0);
        assert_eq!(first.first_silence(), None);
        assert!(!first.sent_update().silence);
        assert_eq!(second.first_silence(), Some(Duration::from_secs(5)));
        assert!(second.sent_update().silence);
        // Without silence_at, the periodic silence's first period.
        let every = Faults {
            silence_every: Some(Duration::from_secs(30)),
            ..Faults::default()
        };
        assert_eq!(
            FaultState::new(&every, 7, 0).first_silence(),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn settings_are_checked() {
        assert!("1.5".parse::<Probability>().is_err());
        assert!("-0.1".parse::<Probability>().is_err());
        assert!("x".parse::<Probability>().is_err());
        assert_eq!("0.25".parse::<Probability>().unwrap().get(), 0.25);
        let endless = Faults {
            silence_every: Some(Duration::from_secs(2)),
            silence_for: Duration::from_secs(2),
            ..Faults::default()
        };
        assert!(matches!(
            endless.validate(),
            Err(FaultsError::EndlessSilence { .. })
        ));
        let zero = Faults {
            drop_after: Some(0),
            ..Faults::default()
        };
        assert_eq!(zero.validate(), Err(FaultsError::Zero("drop_after")));
        assert!(Faults::default().validate().is_ok());
        let zero_period = Faults {
            drop_every: Some(Duration::ZERO),
            ..Faults::default()
        };
        assert_eq!(zero_period.validate(), Err(FaultsError::ZeroPeriod));
        let conn_zero = Faults {
            silence_conn: Some(0),
            ..Faults::default()
        };
        assert_eq!(conn_zero.validate(), Err(FaultsError::NoSuchConnection));
    }
}

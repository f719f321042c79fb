//! What the database pipeline does after a failure: how long to pause, what `/health` says, and
//! what (if anything) to log. No I/O: the pipeline feeds it failures and successes with the time,
//! and follows what it says.
//!
//! An *outage* runs from the first failure to the next success. During one:
//! - the pause before the next attempt doubles from `retry_initial`, up to `retry_max` for
//!   environment errors (authentication, permission, a missing column, a timeout set on the role,
//!   a refusal: nothing changes by itself, so the pipeline must not spin) and up to
//!   [`TRANSIENT_MAX_PAUSE`] for transient ones (an unreachable server comes back at any moment);
//! - `/health` has a problem at once for an environment error (`database: <error>; <fix>`), and
//!   for a transient one only once the outage is older than `unhealthy_after`
//!   (`database unreachable for N s: <error>`);
//! - the log gets one line when the outage begins, one when its class changes, and at most one
//!   every `log_every` while it lasts; one line when it ends (when it was logged).
//!
//! What must always hold: however long an outage lasts and however often the pipeline retries,
//! the log grows by a bounded number of lines per `log_every`, and no retry follows another
//! without a pause.

use std::time::Duration;

use tokio::time::Instant;

use super::ErrorClass;

/// The longest pause between attempts while the database is unreachable: it is retried often
/// enough to catch up soon after it returns.
pub const TRANSIENT_MAX_PAUSE: Duration = Duration::from_secs(5);

/// How often `/health`'s "unreachable for N s" is refreshed while it is shown.
const REFRESH: Duration = Duration::from_secs(5);

/// How the pipeline reacts to failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// How long the database may be unreachable before `/health` says so.
    pub unhealthy_after: Duration,
    /// The pause after the first failure of an outage.
    pub retry_initial: Duration,
    /// The longest pause (environment errors; transient ones stop at [`TRANSIENT_MAX_PAUSE`]).
    pub retry_max: Duration,
    /// The most one outage logs: one line per this long (besides its start, end and changes).
    pub log_every: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            unhealthy_after: Duration::from_secs(30),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            log_every: Duration::from_secs(300),
        }
    }
}

/// What to log about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLine {
    /// The first failure of an outage.
    Began,
    /// The outage goes on, but its class changed (unreachable → refused, or back).
    Changed,
    /// The outage goes on (at most once per `log_every`).
    Still,
}

/// What to do after a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Wait this long before the next attempt.
    pub pause: Duration,
    /// Log this (`None`: say nothing now).
    pub log: Option<LogLine>,
    /// `/health`'s problem now (`None`: healthy still).
    pub problem: Option<String>,
    /// How long the outage has lasted.
    pub down_for: Duration,
    /// Failures in this outage so far.
    pub failures: u32,
}

/// How an outage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// How long it lasted.
    pub down_for: Duration,
    /// Failures it counted.
    pub failures: u32,
}

#[derive(Clone, Debug)]
struct Outage {
    since: Instant,
    class: ErrorClass,
    failures: u32,
    last_log: Instant,
    error: String,
}

/// The database's state as the pipeline sees it (see the module doc).
#[derive(Clone, Debug)]
pub struct DbHealth {
    policy: HealthPolicy,
    outage: Option<Outage>,
}

impl DbHealth {
    /// Healthy, with `policy`.
    pub fn new(policy: HealthPolicy) -> DbHealth {
        DbHealth {
            policy,
            outage: None,
        }
    }

    /// Whether an outage is going on.
    pub fn is_down(&self) -> bool {
        self.outage.is_some()
    }

    /// A failure of class `class` at `now` (`error`: its text, printable).
    pub fn failed(&mut self, now: Instant, class: ErrorClass, error: &str) -> Verdict {
        let policy = self.policy;
        let log = match &mut self.outage {
            None => {
                self.outage = Some(Outage {
                    since: now,
                    class,
                    failures: 0,
                    last_log: now,
                    error: String::new(),
                });
                Some(LogLine::Began)
            }
            Some(o) if o.class != class => {
                o.class = class;
                o.last_log = now;
                Some(LogLine::Changed)
            }
            Some(o) if now.saturating_duration_since(o.last_log) >= policy.log_every => {
                o.last_log = now;
                Some(LogLine::Still)
            }
            Some(_) => None,
        };
        let Some(o) = self.outage.as_mut() else {
            unreachable!("an outage was just recorded")
        };
        o.failures = o.failures.saturating_add(1);
        o.error = error.to_owned();
        let max = match class {
            ErrorClass::Transient => policy.retry_max.min(TRANSIENT_MAX_PAUSE),
            ErrorClass::Environment | ErrorClass::RecordSpecific => policy.retry_max,
        };
        let factor = 1u32 << o.failures.saturating_sub(1).min(16);
        let pause = policy.retry_initial.saturating_mul(factor).min(max);
        let (failures, since) = (o.failures, o.since);
        Verdict {
            pause,
            log,
            problem: self.problem(now),
            down_for: now.saturating_duration_since(since),
            failures,
        }
    }

    /// A success at `now`: the outage, if one was going on, is over.
    pub fn recovered(&mut self, now: Instant) -> Option<Recovered> {
        self.outage.take().map(|o| Recovered {
            down_for: now.saturating_duration_since(o.since),
            failures: o.failures,
        })
    }

    /// What `/health` should say at `now` (`None`: nothing wrong, or not for long enough).
    pub fn problem(&self, now: Instant) -> Option<String> {
        let o = self.outage.as_ref()?;
        let down = now.saturating_duration_since(o.since);
        match o.class {
            ErrorClass::Transient if down < self.policy.unhealthy_after => None,
            ErrorClass::Transient => Some(format!(
                "database unreachable for {} s: {}",
                down.as_secs(),
                o.error
            )),
            ErrorClass::Environment | ErrorClass::RecordSpecific => {
                Some(format!("database: {}", o.error))
            }
        }
    }

    /// When [`DbHealth::problem`] next changes by itself (the unreachable threshold crossed, or
    /// its "for N s" due for a refresh), seen from `now`; `None`: not before the next event.
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        let o = self.outage.as_ref()?;
        if o.class != ErrorClass::Transient {
            return None;
        }
        let threshold = o.since + self.policy.unhealthy_after;
        Some(if now < threshold {
            threshold
        } else {
            now + REFRESH
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            unhealthy_after: Duration::from_secs(30),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            log_every: Duration::from_secs(300),
        }
    }

    #[test]
    fn an_unreachable_database_is_unhealthy_only_after_the_threshold() {
        let t0 = Instant::now();
        let mut h = DbHealth::new(policy());
        let at = |s: u64| t0 + Duration::from_secs(s);
        let v = h.failed(at(0), ErrorClass::Transient, "connection refused");
        assert_eq!((v.log, v.problem.as_deref()), (Some(LogLine::Began), None));
        assert_eq!(h.next_change(at(0)), Some(at(30)));
        assert_eq!(h.problem(at(29)), None);
        assert_eq!(
            h.problem(at(31)).as_deref(),
            Some("database unreachable for 31 s: connection refused")
        );
        assert_eq!(h.next_change(at(31)), Some(at(36)), "refreshed while shown");
        let r = h.recovered(at(40));
        assert_eq!(r.map(|r| r.down_for), Some(Duration::from_secs(40)));
        assert_eq!(h.problem(at(41)), None);
        assert_eq!(h.next_change(at(41)), None);
        assert_eq!(h.recovered(at(42)), None, "one recovery per outage");
    }

    #[test]
    fn an_environment_error_is_unhealthy_at_once_and_logged_once_per_episode() {
        let t0 = Instant::now();
        let mut h = DbHealth::new(policy());
        let mut logged = Vec::new();
        let mut pauses = Vec::new();
        let mut t = t0;
        // Twenty minutes of failures, retried as fast as the verdicts allow.
        while t < t0 + Duration::from_secs(1200) {
            let v = h.failed(
                t,
                ErrorClass::Environment,
                "permission denied (SQLSTATE 42501)",
            );
            assert_eq!(
                v.problem.as_deref(),
                Some("database: permission denied (SQLSTATE 42501)")
            );
            if let Some(l) = v.log {
                logged.push((t - t0, l));
            }
            pauses.push(v.pause);
            t += v.pause;
        }
        assert_eq!(logged[0], (Duration::ZERO, LogLine::Began));
        assert!(
            logged.len() <= 1 + 1200 / 300,
            "at most one line per 5 minutes: {logged:?}"
        );
        assert!(logged[1..].iter().all(|(_, l)| *l == LogLine::Still));
        let ms: Vec<u128> = pauses.iter().take(9).map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert!(
            pauses.iter().all(|p| *p >= Duration::from_millis(500)),
            "never spins"
        );
        assert_eq!(h.next_change(t), None);
    }

    #[test]
    fn transient_pauses_stop_at_five_seconds_and_a_change_of_class_is_logged() {
        let t0 = Instant::now();
        let mut h = DbHealth::new(policy());
        let mut t = t0;
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            let v = h.failed(t, ErrorClass::Transient, "timed out");
            last = v.pause;
            t += v.pause;
        }
        assert_eq!(last, TRANSIENT_MAX_PAUSE);
        // The server answers again, but refuses us: logged once, unhealthy at once.
        let v = h.failed(t, ErrorClass::Environment, "password authentication failed");
        assert_eq!(v.log, Some(LogLine::Changed));
        assert!(v.problem.is_some_and(|p| p.contains("password")));
        let v = h.failed(t + Duration::from_secs(1), ErrorClass::Environment, "again");
        assert_eq!(v.log, None);
    }
}

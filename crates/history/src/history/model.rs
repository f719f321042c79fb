//! The coverage decision, without I/O: from what a source observed of one symbol (its
//! connections, and the marks on each stream: subscriptions, verified snapshots and book states,
//! checksum mismatches, journal damage) to each stream's verified spans and gaps, their union, and
//! the stream `book --at` answers from. The rules and the clock of every bound are in the
//! [module doc](super).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::time::Timestamp;

/// A stream of a symbol: one connection of one collector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct StreamId {
    /// The collector's identity (its journal's `COLLECTOR`).
    pub collector: String,
    /// The collector's connection.
    pub conn_id: i64,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} connection {}", self.collector, self.conn_id)
    }
}

/// One connection of a collector, as its record knows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Connection {
    /// Which.
    pub id: StreamId,
    /// Its first frame's `seq` on the collector's record.
    pub first_seq: i64,
    /// Its last frame's `seq` (heartbeats included).
    pub last_seq: i64,
    /// When its first frame was received.
    pub first_received: Timestamp,
    /// When its last frame was received (heartbeats included): the last instant the connection
    /// is known to have been alive.
    pub last_received: Timestamp,
    /// The collector recorded the connection's end (a `disconnected` event): it noticed the loss
    /// and went on. A connection without one ended with its collector (a stop or a crash).
    pub loss_recorded: bool,
}

/// What was seen on a stream at one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    /// The book subscription was acknowledged: the stream (re)begins here.
    Subscribed,
    /// A snapshot whose checksum verified, with Kraken's timestamp (for a quiet pair, the time of
    /// the book's last change: possibly long before the stream existed).
    Snapshot {
        /// Kraken's timestamp of the snapshot.
        kraken: Timestamp,
    },
    /// A book state the collector journaled (always of a verified book), with Kraken's timestamp
    /// of the last message applied to it.
    State {
        /// Kraken's timestamp of the state.
        kraken: Timestamp,
    },
    /// A book message whose checksum did not match, with Kraken's timestamp, and Kraken's
    /// timestamp of the last message of the symbol on the same connection that verified before it
    /// (when there is one).
    Mismatch {
        /// Kraken's timestamp of the message.
        kraken: Timestamp,
        /// Kraken's timestamp of the last verified message before it.
        last_verified: Option<Timestamp>,
    },
}

/// A mark on a stream.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Observation {
    /// The stream.
    pub stream: StreamId,
    /// The record's `seq` on the collector's record (orders the marks of a collector).
    pub seq: i64,
    /// When the record was received.
    pub received: Timestamp,
    /// What it says.
    pub mark: Mark,
}

/// Records missing from a collector's journal (lost before they reached the source read).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Damage {
    /// The collector.
    pub collector: String,
    /// The first missing `seq`.
    pub first_seq: i64,
    /// Receive time of the last intact record before it, when known.
    pub before: Option<Timestamp>,
    /// Receive time of the first intact record after it, when known.
    pub after: Option<Timestamp>,
}

/// Everything a source observed of one symbol: the input of [`Coverage::compute`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The pair.
    pub symbol: String,
    /// Every connection that carried the symbol (subscribed it, or delivered a verified book).
    pub connections: Vec<Connection>,
    /// The marks on the symbol's streams, in any order.
    pub observations: Vec<Observation>,
    /// Damage in the journals of the collectors concerned, in any order.
    pub damage: Vec<Damage>,
}

impl Observed {
    /// Sorts every list and removes duplicates, so that two sources' observations of the same
    /// record compare equal.
    pub fn normalize(&mut self) {
        self.connections.sort();
        self.connections.dedup();
        self.observations.sort();
        self.observations.dedup();
        self.damage.sort();
        self.damage.dedup();
    }
}

/// Why the book was not known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A checksum mismatch: the book was wrong from that message until a verified snapshot.
    Mismatch,
    /// The connection that carried the verified book was lost while its collector ran on.
    ConnectionLost,
    /// No connection of any collector carried the symbol: its collector was stopped (or crashed).
    NoCollector,
    /// Records of the collector's journal were lost.
    JournalDamage,
    /// Before the first record of the symbol, or after the last.
    NotRecorded,
}

impl Cause {
    /// The snake_case name printed and serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::Mismatch => "mismatch",
            Cause::ConnectionLost => "connection_lost",
            Cause::NoCollector => "no_collector",
            Cause::JournalDamage => "journal_damage",
            Cause::NotRecorded => "not_recorded",
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a verified span started from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanStart {
    /// A snapshot Kraken sent.
    Snapshot,
    /// A book state the collector journaled.
    State,
}

/// What ended a verified span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanEnd {
    /// A checksum mismatch.
    Mismatch,
    /// Journal damage.
    JournalDamage,
    /// The connection's last frame.
    ConnectionEnded,
}

/// A time range in which a stream's book was verified: `[start, end)` on Kraken's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Span {
    /// First instant.
    pub start: Timestamp,
    /// First instant after it.
    pub end: Timestamp,
    /// What it started from.
    pub started_from: SpanStart,
    /// The `seq` of that snapshot or state.
    pub start_seq: i64,
    /// The last `seq` of the collector's record that belongs to the span (records after it are
    /// past its end: the mismatched message, the damage, the connection's end).
    pub last_seq: i64,
    /// What ended it.
    pub ended_by: SpanEnd,
}

impl Span {
    /// Whether `t` lies in it.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.start <= t && t < self.end
    }
}

/// A time range in which the book was not known, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// First instant (`None`: since ever, before the first record).
    pub start: Option<Timestamp>,
    /// First instant after it: where the book is verified again (`None`: not yet, after the last
    /// record).
    pub end: Option<Timestamp>,
    /// Why.
    pub cause: Cause,
    /// The stream whose verified span ended where the gap begins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<StreamId>,
}

impl Gap {
    /// Whether `t` lies in it.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t < e)
    }

    /// Whether it overlaps `[from, to)`.
    pub fn overlaps(&self, from: Timestamp, to: Timestamp) -> bool {
        self.start.is_none_or(|s| s < to) && self.end.is_none_or(|e| from < e)
    }

    /// Its length in seconds (`None` when unbounded).
    pub fn seconds(&self) -> Option<f64> {
        Some(self.end?.nanos_since(self.start?) as f64 / 1e9)
    }

    /// The gap cut to `[from, to)` (`None` bounds stay `None` only where the range is unbounded).
    pub fn clipped(&self, from: Option<Timestamp>, to: Option<Timestamp>) -> Gap {
        let start = match (self.start, from) {
            (Some(s), Some(f)) => Some(s.max(f)),
            (s, f) => s.or(f),
        };
        let end = match (self.end, to) {
            (Some(e), Some(t)) => Some(e.min(t)),
            (e, t) => e.or(t),
        };
        Gap {
            start,
            end,
            cause: self.cause,
            after: self.after.clone(),
        }
    }
}

/// A time range of the union of verified spans: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Interval {
    /// First instant.
    pub start: Timestamp,
    /// First instant after it.
    pub end: Timestamp,
}

/// One stream's coverage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamCoverage {
    /// The stream.
    pub stream: StreamId,
    /// When its connection's first frame was received.
    pub first_received: Timestamp,
    /// When its connection's last frame was received.
    pub last_received: Timestamp,
    /// Its verified spans, in time order, disjoint.
    pub spans: Vec<Span>,
    /// Its own gaps: between its verified spans, and from its last span to its last frame when a
    /// mismatch or damage ended that span.
    pub gaps: Vec<Gap>,
}

impl StreamCoverage {
    /// The span containing `t`, if the stream was verified then.
    pub fn span_at(&self, t: Timestamp) -> Option<&Span> {
        let i = self.spans.partition_point(|s| s.start <= t);
        i.checked_sub(1)
            .and_then(|i| self.spans.get(i))
            .filter(|s| s.contains(t))
    }
}

/// A symbol's coverage: every stream's, and their union.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// The pair.
    pub symbol: String,
    /// Each stream, ordered by (collector, connection).
    pub streams: Vec<StreamCoverage>,
    /// The union of the streams' verified spans, merged, in time order.
    pub spans: Vec<Interval>,
    /// The union's gaps: every instant outside [`Coverage::spans`], in time order; the first
    /// starts at `None` (since ever) and the last ends at `None`.
    pub gaps: Vec<Gap>,
}

/// The per-stream state while its marks are read in `seq` order.
struct Live {
    start: Timestamp,
    from: SpanStart,
    start_seq: i64,
}

/// One item of a stream's timeline: a mark, or damage of its collector's record.
enum Item<'a> {
    Mark(&'a Observation),
    Damage(&'a Damage),
}

impl Item<'_> {
    fn seq(&self) -> i64 {
        match self {
            Item::Mark(o) => o.seq,
            Item::Damage(d) => d.first_seq,
        }
    }
}

/// The verified spans of one stream (see the module doc for the rules).
fn stream_spans(conn: &Connection, marks: &[&Observation], damage: &[&Damage]) -> Vec<Span> {
    let mut items: Vec<Item<'_>> = marks.iter().map(|o| Item::Mark(o)).collect();
    // Damage concerns the stream when records of its connection's life are missing: after its
    // first frame, up to its last. (Records lost before the first frame known hold nothing this
    // stream verified; a loss after the last frame known cannot end a span later than that.)
    items.extend(
        damage
            .iter()
            .filter(|d| d.first_seq > conn.first_seq && d.first_seq <= conn.last_seq)
            .map(|d| Item::Damage(d)),
    );
    // Damage first at an equal seq: the record at the first missing seq is not there.
    items.sort_by_key(|i| (i.seq(), matches!(i, Item::Mark(_))));
    let mut spans = Vec::new();
    let mut floor = conn.first_received;
    let mut live: Option<Live> = None;
    // A span of this stream ended (empty spans are dropped, so `spans` alone cannot say).
    let mut ended_once = false;
    let mut last_seen = conn.first_received;
    let mut close = |live: Live, end: Timestamp, last_seq: i64, ended_by: SpanEnd| {
        let end = end.max(live.start);
        if end > live.start {
            spans.push(Span {
                start: live.start,
                end,
                started_from: live.from,
                start_seq: live.start_seq,
                last_seq,
                ended_by,
            });
        }
    };
    for item in items {
        match item {
            Item::Mark(o) => {
                last_seen = last_seen.max(o.received);
                match o.mark {
                    Mark::Subscribed => {
                        // The stream begins at its subscription; a resubscription after a
                        // mismatch does not make it begin again (the mismatch bounds it).
                        if live.is_none() && !ended_once {
                            floor = floor.max(o.received);
                        }
                    }
                    Mark::Snapshot { kraken } | Mark::State { kraken } => {
                        if live.is_none() {
                            live = Some(Live {
                                start: kraken.max(floor),
                                from: if matches!(o.mark, Mark::Snapshot { .. }) {
                                    SpanStart::Snapshot
                                } else {
                                    SpanStart::State
                                },
                                start_seq: o.seq,
                            });
                        }
                    }
                    Mark::Mismatch {
                        kraken,
                        last_verified,
                    } => {
                        if let Some(l) = live.take() {
                            // Proven up to the last message that verified: whatever the mismatch
                            // shows was lost happened after it.
                            let end = match last_verified {
                                Some(v) => kraken.min(v.add_nanos(1000)),
                                None => kraken,
                            };
                            close(l, end, o.seq - 1, SpanEnd::Mismatch);
                            ended_once = true;
                        }
                        // The next span starts at the mismatched message at the earliest (on
                        // Kraken's clock, as the book at that instant is a snapshot's business).
                        floor = floor.max(kraken);
                    }
                }
            }
            Item::Damage(d) => {
                if let Some(l) = live.take() {
                    close(
                        l,
                        d.before.unwrap_or(last_seen),
                        d.first_seq - 1,
                        SpanEnd::JournalDamage,
                    );
                    ended_once = true;
                }
                if let Some(t) = d.after.or(d.before) {
                    floor = floor.max(t);
                    last_seen = last_seen.max(t);
                }
            }
        }
    }
    if let Some(l) = live {
        close(
            l,
            conn.last_received,
            conn.last_seq,
            SpanEnd::ConnectionEnded,
        );
    }
    spans
}

/// The cause of a gap that begins at `at`, where `span` of `conn` ended.
fn cause_at(span: &Span, conn: &Connection, at: Timestamp, connections: &[Connection]) -> Cause {
    match span.ended_by {
        SpanEnd::Mismatch => Cause::Mismatch,
        SpanEnd::JournalDamage => Cause::JournalDamage,
        SpanEnd::ConnectionEnded => {
            let another_open = connections
                .iter()
                .any(|c| c.id != conn.id && c.first_received <= at && at < c.last_received);
            if conn.loss_recorded || another_open {
                Cause::ConnectionLost
            } else {
                Cause::NoCollector
            }
        }
    }
}

impl Coverage {
    /// Computes the coverage of `observed.symbol` from what a source observed.
    pub fn compute(observed: &Observed) -> Coverage {
        let mut connections: BTreeMap<StreamId, Connection> = BTreeMap::new();
        for c in &observed.connections {
            connections
                .entry(c.id.clone())
                .and_modify(|e| {
                    // The same connection seen twice (two sources of one record): the widest.
                    e.first_seq = e.first_seq.min(c.first_seq);
                    e.first_received = e.first_received.min(c.first_received);
                    e.last_seq = e.last_seq.max(c.last_seq);
                    e.last_received = e.last_received.max(c.last_received);
                    e.loss_recorded |= c.loss_recorded;
                })
                .or_insert_with(|| c.clone());
        }
        let mut marks: BTreeMap<&StreamId, Vec<&Observation>> = BTreeMap::new();
        for o in &observed.observations {
            marks.entry(&o.stream).or_default().push(o);
        }
        // A stream with marks but no connection row (its liveness was not stored): its marks
        // bound it.
        for (id, list) in &marks {
            if connections.contains_key(*id) {
                continue;
            }
            let first = list
                .iter()
                .min_by_key(|o| o.seq)
                .map(|o| (o.seq, o.received));
            let last = list
                .iter()
                .max_by_key(|o| o.seq)
                .map(|o| (o.seq, o.received));
            if let (Some(first), Some(last)) = (first, last) {
                connections.insert(
                    (*id).clone(),
                    Connection {
                        id: (*id).clone(),
                        first_seq: first.0,
                        last_seq: last.0,
                        first_received: first.1,
                        last_received: last.1,
                        loss_recorded: false,
                    },
                );
            }
        }
        let conns: Vec<Connection> = connections.into_values().collect();
        let mut streams = Vec::with_capacity(conns.len());
        for conn in &conns {
            let stream_marks = marks.get(&conn.id).map(Vec::as_slice).unwrap_or(&[]);
            let damage: Vec<&Damage> = observed
                .damage
                .iter()
                .filter(|d| d.collector == conn.id.collector)
                .collect();
            let spans = stream_spans(conn, stream_marks, &damage);
            let mut gaps = Vec::new();
            for (i, span) in spans.iter().enumerate() {
                let next = spans.get(i + 1).map(|s| s.start);
                let end = match next {
                    Some(n) => n,
                    None if span.ended_by != SpanEnd::ConnectionEnded
                        && conn.last_received > span.end =>
                    {
                        conn.last_received
                    }
                    None => continue,
                };
                if end > span.end {
                    gaps.push(Gap {
                        start: Some(span.end),
                        end: Some(end),
                        cause: cause_at(span, conn, span.end, std::slice::from_ref(conn)),
                        after: Some(conn.id.clone()),
                    });
                }
            }
            streams.push(StreamCoverage {
                stream: conn.id.clone(),
                first_received: conn.first_received,
                last_received: conn.last_received,
                spans,
                gaps,
            });
        }
        let (spans, gaps) = union(&streams, &conns, &observed.observations);
        Coverage {
            symbol: observed.symbol.clone(),
            streams,
            spans,
            gaps,
        }
    }

    /// Whether the book is verified at `t` on some stream.
    pub fn covers(&self, t: Timestamp) -> bool {
        self.gap_at(t).is_none()
    }

    /// The gap `t` lies in, if any.
    pub fn gap_at(&self, t: Timestamp) -> Option<&Gap> {
        let i = self
            .gaps
            .partition_point(|g| g.start.is_none_or(|s| s <= t));
        i.checked_sub(1)
            .and_then(|i| self.gaps.get(i))
            .filter(|g| g.contains(t))
    }

    /// The gaps overlapping `[from, to)`, in time order.
    pub fn gaps_in(&self, from: Timestamp, to: Timestamp) -> impl Iterator<Item = &Gap> {
        self.gaps.iter().filter(move |g| g.overlaps(from, to))
    }

    /// The first gap that ends after `after` and begins at or before `at` (the gap before the
    /// first record, which begins nowhere, is never one: nothing was lost there).
    pub fn next_gap(&self, after: Timestamp, at: Timestamp) -> Option<&Gap> {
        self.gaps
            .iter()
            .find(|g| g.end.is_none_or(|e| e > after) && g.start.is_some_and(|s| s <= at))
    }

    /// The stream `book --at t` answers from, and its span: among the streams verified at `t`,
    /// the one whose current span started earliest (it has been verified the longest, so a
    /// reader that follows it switches least); ties go to the smallest (collector, connection).
    pub fn choose(&self, t: Timestamp) -> Option<(&StreamCoverage, &Span)> {
        self.streams
            .iter()
            .filter_map(|s| s.span_at(t).map(|span| (s, span)))
            .min_by(|(a, x), (b, y)| x.start.cmp(&y.start).then_with(|| a.stream.cmp(&b.stream)))
    }

    /// The stream a replay from `t` begins with: the one [`choose`](Self::choose) gives at `t`,
    /// else (`t` in a gap) the span that begins first after `t` (ties to the smallest id).
    pub fn choose_from(&self, t: Timestamp) -> Option<(&StreamCoverage, &Span)> {
        self.choose(t).or_else(|| {
            self.streams
                .iter()
                .flat_map(|s| s.spans.iter().map(move |span| (s, span)))
                .filter(|(_, span)| span.start > t)
                .min_by(|(a, x), (b, y)| {
                    x.start.cmp(&y.start).then_with(|| a.stream.cmp(&b.stream))
                })
        })
    }

    /// The first instant of the union of verified spans.
    pub fn first_verified(&self) -> Option<Timestamp> {
        self.spans.first().map(|s| s.start)
    }

    /// The last instant of the union of verified spans (exclusive).
    pub fn last_verified(&self) -> Option<Timestamp> {
        self.spans.last().map(|s| s.end)
    }

    /// Where the record of the symbol ends: the last frame of its last connection.
    pub fn record_end(&self) -> Option<Timestamp> {
        self.streams.iter().map(|s| s.last_received).max()
    }

    /// Seconds of gaps inside `[from, to)` (unbounded gaps counted only inside the range).
    pub fn gap_seconds(&self, from: Timestamp, to: Timestamp) -> f64 {
        self.gaps_in(from, to)
            .filter_map(|g| g.clipped(Some(from), Some(to)).seconds())
            .sum()
    }
}

/// The union of the streams' spans, and its gaps over the whole time line.
fn union(
    streams: &[StreamCoverage],
    conns: &[Connection],
    observations: &[Observation],
) -> (Vec<Interval>, Vec<Gap>) {
    let first_record = conns.iter().map(|c| c.first_received).min();
    let last_record = conns.iter().map(|c| c.last_received).max();
    let mut all: Vec<(usize, &Span)> = streams
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.spans.iter().map(move |span| (i, span)))
        .collect();
    // `streams` is ordered by id: the index breaks ties deterministically.
    all.sort_by_key(|(i, s)| (s.start, *i));
    let mut intervals: Vec<Interval> = Vec::new();
    let mut gaps: Vec<Gap> = Vec::new();
    // The current merged interval, and the span that ends it (latest end; ties to the first
    // stream).
    let mut current: Option<(Interval, usize, &Span)> = None;
    let gap_after = |end: Timestamp, next: Option<Timestamp>, i: usize, span: &Span| Gap {
        start: Some(end),
        end: next,
        cause: cause_at(span, &conns[i], end, conns),
        after: Some(streams[i].stream.clone()),
    };
    for (i, span) in all {
        match current.as_mut() {
            None => {
                let first = span.start;
                // Before the first verified span: not recorded before the first record; from
                // there, a mismatch if the record showed one, else not recorded yet.
                match first_record.filter(|&f| f < first) {
                    Some(f) => {
                        gaps.push(Gap {
                            start: None,
                            end: Some(f),
                            cause: Cause::NotRecorded,
                            after: None,
                        });
                        let mismatched = observations
                            .iter()
                            .any(|o| matches!(o.mark, Mark::Mismatch { .. }) && o.received < first);
                        gaps.push(Gap {
                            start: Some(f),
                            end: Some(first),
                            cause: if mismatched {
                                Cause::Mismatch
                            } else {
                                Cause::NotRecorded
                            },
                            after: None,
                        });
                    }
                    None => gaps.push(Gap {
                        start: None,
                        end: Some(first),
                        cause: Cause::NotRecorded,
                        after: None,
                    }),
                }
                current = Some((
                    Interval {
                        start: span.start,
                        end: span.end,
                    },
                    i,
                    span,
                ));
            }
            Some((iv, ender_i, ender)) => {
                if span.start <= iv.end {
                    if span.end > iv.end {
                        iv.end = span.end;
                        *ender_i = i;
                        *ender = span;
                    }
                } else {
                    gaps.push(gap_after(iv.end, Some(span.start), *ender_i, ender));
                    intervals.push(*iv);
                    current = Some((
                        Interval {
                            start: span.start,
                            end: span.end,
                        },
                        i,
                        span,
                    ));
                }
            }
        }
    }
    match current {
        Some((iv, i, span)) => {
            intervals.push(iv);
            match last_record.filter(|&l| l > iv.end) {
                Some(l) => {
                    gaps.push(gap_after(iv.end, Some(l), i, span));
                    gaps.push(Gap {
                        start: Some(l),
                        end: None,
                        cause: Cause::NotRecorded,
                        after: None,
                    });
                }
                None => gaps.push(Gap {
                    start: Some(iv.end),
                    end: None,
                    cause: Cause::NotRecorded,
                    after: None,
                }),
            }
        }
        None => match (first_record, last_record) {
            (Some(f), Some(l)) => {
                let mismatched = observations
                    .iter()
                    .any(|o| matches!(o.mark, Mark::Mismatch { .. }));
                gaps.push(Gap {
                    start: None,
                    end: Some(f),
                    cause: Cause::NotRecorded,
                    after: None,
                });
                if l > f {
                    gaps.push(Gap {
                        start: Some(f),
                        end: Some(l),
                        cause: if mismatched {
                            Cause::Mismatch
                        } else {
                            Cause::NotRecorded
                        },
                        after: None,
                    });
                }
                gaps.push(Gap {
                    start: Some(l),
                    end: None,
                    cause: Cause::NotRecorded,
                    after: None,
                });
            }
            _ => gaps.push(Gap {
                start: None,
                end: None,
                cause: Cause::NotRecorded,
                after: None,
            }),
        },
    }
    // Adjacent gaps of one cause are one gap; empty ones are none.
    let mut merged: Vec<Gap> = Vec::with_capacity(gaps.len());
    for g in gaps {
        if let (Some(s), Some(e)) = (g.start, g.end)
            && e <= s
        {
            continue;
        }
        match merged.last_mut() {
            Some(prev) if prev.cause == g.cause && prev.end == g.start && prev.end.is_some() => {
                prev.end = g.end;
            }
            _ => merged.push(g),
        }
    }
    (intervals, merged)
}

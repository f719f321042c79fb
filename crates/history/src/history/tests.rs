//! Tables of observations and the coverage they must give: every cause, the clocks, overlapping
//! streams and their union, and the stream `book --at` answers from.

use super::model::*;
use crate::time::Timestamp;

/// Second `s` (a fixed day; only differences matter).
fn t(s: f64) -> Timestamp {
    Timestamp::from_unix_nanos(1_800_000_000_000_000_000 + (s * 1e9).round() as i64)
}

fn id(collector: &str, conn: i64) -> StreamId {
    StreamId {
        collector: collector.into(),
        conn_id: conn,
    }
}

/// A connection: seqs `first..=last`, frames received from `from` to `to` seconds.
fn conn(c: &str, n: i64, seqs: (i64, i64), from: f64, to: f64, loss_recorded: bool) -> Connection {
    Connection {
        id: id(c, n),
        first_seq: seqs.0,
        last_seq: seqs.1,
        first_received: t(from),
        last_received: t(to),
        loss_recorded,
    }
}

fn mark(c: &str, n: i64, seq: i64, received: f64, mark: Mark) -> Observation {
    Observation {
        stream: id(c, n),
        seq,
        received: t(received),
        mark,
    }
}

fn sub(c: &str, n: i64, seq: i64, received: f64) -> Observation {
    mark(c, n, seq, received, Mark::Subscribed)
}

/// A verified snapshot with Kraken timestamp `kraken`, received at `received`.
fn snap(c: &str, n: i64, seq: i64, received: f64, kraken: f64) -> Observation {
    mark(c, n, seq, received, Mark::Snapshot { kraken: t(kraken) })
}

fn state(c: &str, n: i64, seq: i64, received: f64, kraken: f64) -> Observation {
    mark(c, n, seq, received, Mark::State { kraken: t(kraken) })
}

/// A mismatch at Kraken time `kraken` with no verified message known before it.
fn mismatch(c: &str, n: i64, seq: i64, received: f64, kraken: f64) -> Observation {
    mark(
        c,
        n,
        seq,
        received,
        Mark::Mismatch {
            kraken: t(kraken),
            last_verified: None,
        },
    )
}

/// A mismatch at Kraken time `kraken` whose last verified message before it was at `verified`.
fn mismatch_after(
    c: &str,
    n: i64,
    seq: i64,
    received: f64,
    kraken: f64,
    verified: f64,
) -> Observation {
    mark(
        c,
        n,
        seq,
        received,
        Mark::Mismatch {
            kraken: t(kraken),
            last_verified: Some(t(verified)),
        },
    )
}

fn observed(conns: Vec<Connection>, marks: Vec<Observation>, damage: Vec<Damage>) -> Observed {
    Observed {
        symbol: "BTC/USD".into(),
        connections: conns,
        observations: marks,
        damage,
    }
}

/// A gap as (start, end, cause) in seconds (`None`: unbounded).
type G = (Option<f64>, Option<f64>, Cause);

fn gaps_of(c: &Coverage) -> Vec<G> {
    let secs = |x: Option<Timestamp>| x.map(|x| x.nanos_since(t(0.0)) as f64 / 1e9);
    c.gaps
        .iter()
        .map(|g| (secs(g.start), secs(g.end), g.cause))
        .collect()
}

use Cause::*;

/// The union's gaps for each cause, the clocks of each bound, and how several streams combine.
#[test]
fn every_cause_gives_its_gap_with_the_right_bounds() {
    let cases: Vec<(&str, Observed, Vec<G>)> = vec![
        (
            "one connection: not recorded before its first verified book and after its last frame",
            observed(
                vec![conn("a", 1, (1, 100), 10.0, 50.0, false)],
                vec![sub("a", 1, 3, 10.5), snap("a", 1, 4, 10.6, 10.55)],
                vec![],
            ),
            vec![
                (None, Some(10.55), NotRecorded),
                (Some(50.0), None, NotRecorded),
            ],
        ),
        (
            "a dropped connection the collector recorded: connection_lost from its last frame (a receive time) to the next verified book",
            observed(
                vec![
                    conn("a", 1, (1, 100), 10.0, 30.0, true),
                    conn("a", 2, (102, 200), 31.0, 60.0, false),
                ],
                vec![
                    sub("a", 1, 3, 10.5),
                    snap("a", 1, 4, 10.6, 10.55),
                    sub("a", 2, 104, 31.5),
                    snap("a", 2, 105, 31.6, 31.58),
                ],
                vec![],
            ),
            vec![
                (None, Some(10.55), NotRecorded),
                (Some(30.0), Some(31.58), ConnectionLost),
                (Some(60.0), None, NotRecorded),
            ],
        ),
        (
            "a collector stopped for 15 s (no disconnected event): no_collector; the quiet pair's snapshot after the restart carries the time of its last change (5 s), yet coverage resumes only when the new stream was subscribed",
            observed(
                vec![
                    conn("a", 1, (1, 100), 4.0, 30.0, false),
                    conn("a", 2, (102, 200), 45.0, 60.0, false),
                ],
                vec![
                    sub("a", 1, 3, 4.5),
                    snap("a", 1, 4, 4.6, 4.55),
                    sub("a", 2, 104, 45.5),
                    snap("a", 2, 105, 45.6, 5.0),
                ],
                vec![],
            ),
            vec![
                (None, Some(4.55), NotRecorded),
                (Some(30.0), Some(45.5), NoCollector),
                (Some(60.0), None, NotRecorded),
            ],
        ),
        (
            "a crash: no disconnected event, the liveness row's last frame ends the span; the same as a stop",
            observed(
                vec![
                    conn("a", 1, (1, 500), 0.0, 20.25, false),
                    conn("a", 3, (520, 900), 40.0, 70.0, true),
                ],
                vec![
                    snap("a", 1, 2, 0.1, 0.1),
                    sub("a", 3, 522, 40.2),
                    snap("a", 3, 523, 40.3, 40.3),
                ],
                vec![],
            ),
            vec![
                (None, Some(0.1), NotRecorded),
                (Some(20.25), Some(40.3), NoCollector),
                (Some(70.0), None, NotRecorded),
            ],
        ),
        (
            "a checksum mismatch: the span ends at the mismatched message's Kraken time and resumes at the resubscription's snapshot",
            observed(
                vec![conn("a", 1, (1, 300), 0.0, 90.0, false)],
                vec![
                    sub("a", 1, 2, 0.2),
                    snap("a", 1, 3, 0.3, 0.25),
                    mismatch("a", 1, 150, 40.01, 40.0),
                    sub("a", 1, 160, 42.0),
                    snap("a", 1, 161, 42.1, 42.05),
                ],
                vec![],
            ),
            vec![
                (None, Some(0.25), NotRecorded),
                (Some(40.0), Some(42.05), Mismatch),
                (Some(90.0), None, NotRecorded),
            ],
        ),
        (
            "a mismatch after an update was lost: proven only up to the last message that verified (the loss lies after it, somewhere before the mismatch)",
            observed(
                vec![conn("a", 1, (1, 300), 0.0, 90.0, false)],
                vec![
                    sub("a", 1, 2, 0.2),
                    snap("a", 1, 3, 0.3, 0.25),
                    mismatch_after("a", 1, 150, 40.01, 40.0, 38.5),
                    sub("a", 1, 160, 42.0),
                    snap("a", 1, 161, 42.1, 42.05),
                ],
                vec![],
            ),
            vec![
                (None, Some(0.25), NotRecorded),
                (Some(38.500001), Some(42.05), Mismatch),
                (Some(90.0), None, NotRecorded),
            ],
        ),
        (
            "a mismatch in the same microsecond as the last verified message: the gap starts at the mismatch",
            observed(
                vec![conn("a", 1, (1, 300), 0.0, 90.0, false)],
                vec![
                    snap("a", 1, 3, 0.3, 0.25),
                    mismatch_after("a", 1, 150, 40.01, 40.0, 40.0),
                    snap("a", 1, 161, 42.1, 42.05),
                ],
                vec![],
            ),
            vec![
                (None, Some(0.25), NotRecorded),
                (Some(40.0), Some(42.05), Mismatch),
                (Some(90.0), None, NotRecorded),
            ],
        ),
        (
            "a quiet pair whose only verified message is its old-stamped snapshot: a mismatch leaves nothing of the span proven",
            observed(
                vec![conn("a", 1, (1, 300), 10.0, 90.0, false)],
                vec![
                    sub("a", 1, 2, 10.2),
                    snap("a", 1, 3, 10.3, 1.0),
                    mismatch_after("a", 1, 150, 40.01, 40.0, 1.0),
                    snap("a", 1, 161, 42.1, 42.05),
                ],
                vec![],
            ),
            vec![
                (None, Some(10.0), NotRecorded),
                (Some(10.0), Some(42.05), Mismatch),
                (Some(90.0), None, NotRecorded),
            ],
        ),
        (
            "healed at once: the resubscription's snapshot is stamped with the mismatched message's time (the book's last change): the book is known at every instant, no gap",
            observed(
                vec![conn("a", 1, (1, 300), 0.0, 90.0, false)],
                vec![
                    sub("a", 1, 2, 0.2),
                    snap("a", 1, 3, 0.3, 0.25),
                    mismatch("a", 1, 150, 40.01, 40.0),
                    sub("a", 1, 160, 42.0),
                    snap("a", 1, 161, 42.1, 40.0),
                ],
                vec![],
            ),
            vec![
                (None, Some(0.25), NotRecorded),
                (Some(90.0), None, NotRecorded),
            ],
        ),
        (
            "a resubscription's snapshot stamped before the mismatch resumes at the mismatch, never before it",
            observed(
                vec![conn("a", 1, (1, 300), 0.0, 90.0, false)],
                vec![
                    sub("a", 1, 2, 0.2),
                    snap("a", 1, 3, 0.3, 0.25),
                    mismatch("a", 1, 150, 40.01, 40.0),
                    sub("a", 1, 160, 42.0),
                    snap("a", 1, 161, 42.1, 12.0),
                ],
                vec![],
            ),
            vec![
                (None, Some(0.25), NotRecorded),
                (Some(90.0), None, NotRecorded),
            ],
        ),
        (
            "a stream whose first snapshot mismatched begins at its last subscription: an old-stamped snapshot after it covers nothing before",
            observed(
                vec![conn("a", 1, (1, 300), 0.0, 90.0, false)],
                vec![
                    sub("a", 1, 2, 0.2),
                    mismatch("a", 1, 3, 0.3, 0.1),
                    sub("a", 1, 160, 42.0),
                    snap("a", 1, 161, 42.1, 0.1),
                ],
                vec![],
            ),
            vec![
                (None, Some(0.0), NotRecorded),
                (Some(0.0), Some(42.0), Mismatch),
                (Some(90.0), None, NotRecorded),
            ],
        ),
        (
            "a mismatch never healed: dark to the connection's last frame, then not recorded",
            observed(
                vec![conn("a", 1, (1, 300), 0.0, 90.0, true)],
                vec![
                    snap("a", 1, 3, 0.3, 0.3),
                    mismatch("a", 1, 150, 40.01, 40.0),
                    mismatch("a", 1, 151, 40.5, 40.49),
                ],
                vec![],
            ),
            vec![
                (None, Some(0.3), NotRecorded),
                (Some(40.0), Some(90.0), Mismatch),
                (Some(90.0), None, NotRecorded),
            ],
        ),
        (
            "journal damage: the span ends at the last intact record before it (a receive time) and resumes at the first book state after it, not before the first intact record",
            observed(
                vec![conn("a", 1, (1, 900), 0.0, 90.0, false)],
                vec![snap("a", 1, 3, 0.3, 0.3), state("a", 1, 700, 70.0, 69.0)],
                vec![Damage {
                    collector: "a".into(),
                    first_seq: 400,
                    before: Some(t(33.0)),
                    after: Some(t(69.5)),
                }],
            ),
            vec![
                (None, Some(0.3), NotRecorded),
                (Some(33.0), Some(69.5), JournalDamage),
                (Some(90.0), None, NotRecorded),
            ],
        ),
        (
            "damage of another collector, or outside the connection's records, changes nothing",
            observed(
                vec![conn("a", 1, (100, 900), 0.0, 90.0, false)],
                vec![snap("a", 1, 103, 0.3, 0.3)],
                vec![
                    Damage {
                        collector: "b".into(),
                        first_seq: 400,
                        before: Some(t(33.0)),
                        after: Some(t(34.0)),
                    },
                    Damage {
                        collector: "a".into(),
                        first_seq: 950,
                        before: Some(t(91.0)),
                        after: Some(t(92.0)),
                    },
                    Damage {
                        collector: "a".into(),
                        first_seq: 50,
                        before: None,
                        after: Some(t(0.0)),
                    },
                ],
            ),
            vec![
                (None, Some(0.3), NotRecorded),
                (Some(90.0), None, NotRecorded),
            ],
        ),
        (
            "recorded but never verified: a mismatch from the first record to the last",
            observed(
                vec![conn("a", 1, (1, 50), 5.0, 25.0, false)],
                vec![mismatch("a", 1, 4, 5.5, 5.4)],
                vec![],
            ),
            vec![
                (None, Some(5.0), NotRecorded),
                (Some(5.0), Some(25.0), Mismatch),
                (Some(25.0), None, NotRecorded),
            ],
        ),
        (
            "nothing recorded at all",
            observed(vec![], vec![], vec![]),
            vec![(None, None, NotRecorded)],
        ),
        (
            "two collectors: the union has a gap only where both are dark; its cause is what ended the last verified span",
            observed(
                vec![
                    conn("a", 1, (1, 100), 0.0, 30.0, false),
                    conn("a", 2, (102, 200), 50.0, 100.0, false),
                    conn("b", 7, (1, 100), 5.0, 100.0, true),
                ],
                vec![
                    snap("a", 1, 2, 0.1, 0.1),
                    snap("a", 2, 103, 50.1, 50.1),
                    snap("b", 7, 2, 5.1, 5.1),
                    mismatch("b", 7, 40, 20.01, 20.0),
                    snap("b", 7, 50, 35.0, 34.9),
                    mismatch("b", 7, 60, 40.01, 40.0),
                    snap("b", 7, 70, 45.0, 45.0),
                ],
                vec![],
            ),
            vec![
                (None, Some(0.1), NotRecorded),
                // a stopped at 30 while b was connected (dark after its mismatch at 20): the
                // stream that ended the union's coverage lost its connection.
                (Some(30.0), Some(34.9), ConnectionLost),
                (Some(40.0), Some(45.0), Mismatch),
                (Some(100.0), None, NotRecorded),
            ],
        ),
        (
            "two connections of one collector overlapping: the union is seamless across the drop of either",
            observed(
                vec![
                    conn("a", 1, (1, 400), 0.0, 60.0, true),
                    conn("a", 2, (2, 399), 0.05, 30.0, true),
                    conn("a", 3, (401, 800), 30.5, 90.0, false),
                ],
                vec![
                    snap("a", 1, 5, 0.2, 0.2),
                    snap("a", 2, 6, 0.3, 0.3),
                    snap("a", 3, 405, 31.0, 31.0),
                ],
                vec![],
            ),
            vec![
                (None, Some(0.2), NotRecorded),
                (Some(90.0), None, NotRecorded),
            ],
        ),
    ];
    for (what, obs, want) in cases {
        let c = Coverage::compute(&obs);
        assert_eq!(gaps_of(&c), want, "{what}");
        // Every instant is either covered or in exactly one gap.
        for s in [
            0.0, 4.0, 10.0, 20.5, 30.0, 33.0, 40.0, 44.0, 59.0, 90.0, 95.0,
        ] {
            let in_gaps = c.gaps.iter().filter(|g| g.contains(t(s))).count();
            let in_spans = c
                .spans
                .iter()
                .filter(|i| i.start <= t(s) && t(s) < i.end)
                .count();
            assert_eq!(in_gaps + in_spans, 1, "{what}: {s} s");
            assert_eq!(c.covers(t(s)), in_spans == 1, "{what}: {s} s");
        }
    }
}

/// Each stream keeps its own spans and gaps beside the union.
#[test]
fn each_stream_has_its_own_spans_and_gaps() {
    let obs = observed(
        vec![
            conn("a", 1, (1, 300), 0.0, 90.0, false),
            conn("b", 1, (1, 300), 0.0, 90.0, false),
        ],
        vec![
            snap("a", 1, 3, 0.3, 0.3),
            mismatch("a", 1, 150, 40.01, 40.0),
            snap("a", 1, 160, 42.1, 42.1),
            snap("b", 1, 3, 0.4, 0.4),
        ],
        vec![],
    );
    let c = Coverage::compute(&obs);
    let a = &c.streams[0];
    assert_eq!(a.stream, id("a", 1));
    assert_eq!(a.spans.len(), 2);
    assert_eq!(
        (a.spans[0].start, a.spans[0].end, a.spans[0].ended_by),
        (t(0.3), t(40.0), SpanEnd::Mismatch)
    );
    assert_eq!(
        a.spans[0].last_seq, 149,
        "the mismatched message is past the span"
    );
    assert_eq!(
        (a.spans[1].start, a.spans[1].end, a.spans[1].ended_by),
        (t(42.1), t(90.0), SpanEnd::ConnectionEnded)
    );
    assert_eq!(a.spans[1].last_seq, 300);
    assert_eq!(a.gaps.len(), 1);
    assert_eq!(
        (a.gaps[0].start, a.gaps[0].end, a.gaps[0].cause),
        (Some(t(40.0)), Some(t(42.1)), Mismatch)
    );
    // b covers a's gap: the union has none inside the record.
    assert!(c.streams[1].gaps.is_empty());
    assert_eq!(c.spans.len(), 1);
    assert_eq!((c.spans[0].start, c.spans[0].end), (t(0.3), t(90.0)));
}

/// `book --at` answers from the stream whose current span started earliest; ties go to the
/// smallest (collector, connection); an instant in no span has no stream.
#[test]
fn the_stream_chosen_is_the_one_verified_longest_then_the_smallest_id() {
    let obs = observed(
        vec![
            conn("b", 1, (1, 300), 0.0, 90.0, false),
            conn("a", 2, (1, 300), 0.0, 90.0, false),
            conn("a", 1, (1, 300), 0.0, 60.0, false),
        ],
        vec![
            snap("b", 1, 3, 1.0, 1.0),
            snap("a", 2, 3, 1.0, 1.0),
            snap("a", 1, 3, 0.5, 0.5),
            mismatch("a", 1, 100, 30.0, 30.0),
            snap("a", 1, 110, 35.0, 35.0),
            mismatch("b", 1, 100, 50.0, 50.0),
            mismatch("a", 2, 100, 50.0, 50.0),
        ],
        vec![],
    );
    let c = Coverage::compute(&obs);
    let chosen = |s: f64| {
        c.choose(t(s))
            .map(|(st, span)| (st.stream.clone(), span.start))
    };
    let cases = [
        (0.7, Some((id("a", 1), t(0.5))), "only a/1 is verified yet"),
        (
            10.0,
            Some((id("a", 1), t(0.5))),
            "a/1 started earliest (0.5 s against 1 s)",
        ),
        (
            32.0,
            Some((id("a", 2), t(1.0))),
            "a/1 is dark; a/2 and b/1 started together: the smaller id",
        ),
        (
            40.0,
            Some((id("a", 2), t(1.0))),
            "a/1's new span is younger than a/2's",
        ),
        (
            55.0,
            Some((id("a", 1), t(35.0))),
            "a/2 and b/1 mismatched at 50 s",
        ),
        (65.0, None, "every stream is dark"),
    ];
    for (s, want, what) in cases {
        assert_eq!(chosen(s), want, "{what}");
    }
    let from = |s: f64| {
        c.choose_from(t(s))
            .map(|(st, span)| (st.stream.clone(), span.start))
    };
    assert_eq!(
        from(0.2),
        Some((id("a", 1), t(0.5))),
        "before any span: the first"
    );
    assert_eq!(from(10.0), chosen(10.0), "inside a span: the chosen one");
    assert_eq!(from(65.0), None, "nothing after");
    let g = c.gap_at(t(65.0)).expect("a gap");
    assert_eq!(
        (g.start, g.end, g.cause),
        (Some(t(60.0)), Some(t(90.0)), ConnectionLost),
        "a/1 stopped while the other two were connected (dark): not a stopped collector"
    );
}

/// The per-connection open test: a connection still open where the stopped one ended makes it a
/// lost connection, not a stopped collector.
#[test]
fn a_stop_while_another_connection_is_open_is_a_lost_connection() {
    let obs = observed(
        vec![
            conn("a", 1, (1, 100), 0.0, 30.0, false),
            conn("b", 1, (1, 100), 20.0, 50.0, false),
        ],
        vec![snap("a", 1, 2, 0.1, 0.1), mismatch("b", 1, 3, 20.1, 20.1)],
        vec![],
    );
    let c = Coverage::compute(&obs);
    assert_eq!(
        gaps_of(&c),
        vec![
            (None, Some(0.1), NotRecorded),
            (Some(30.0), Some(50.0), ConnectionLost),
            (Some(50.0), None, NotRecorded),
        ]
    );
}

/// The same marks in any order, and duplicated, give the same coverage.
#[test]
fn the_order_of_observations_does_not_matter() {
    let marks = vec![
        sub("a", 1, 2, 0.2),
        snap("a", 1, 3, 0.3, 0.25),
        mismatch("a", 1, 150, 40.01, 40.0),
        sub("a", 1, 160, 42.0),
        snap("a", 1, 161, 42.1, 12.0),
    ];
    let mut reversed = marks.clone();
    reversed.reverse();
    reversed.extend(marks.clone());
    let conns = vec![conn("a", 1, (1, 300), 0.0, 90.0, false)];
    let a = Coverage::compute(&observed(conns.clone(), marks, vec![]));
    let mut obs = observed(conns, reversed, vec![]);
    obs.normalize();
    assert_eq!(Coverage::compute(&obs), a);
}

/// Gap helpers: which gaps a range sees, and the next gap after a message.
#[test]
fn gaps_in_a_range_and_the_next_gap() {
    let obs = observed(
        vec![
            conn("a", 1, (1, 100), 10.0, 30.0, true),
            conn("a", 2, (102, 200), 31.0, 60.0, false),
        ],
        vec![snap("a", 1, 4, 10.6, 10.6), snap("a", 2, 105, 31.6, 31.6)],
        vec![],
    );
    let c = Coverage::compute(&obs);
    let in_range: Vec<Cause> = c.gaps_in(t(20.0), t(40.0)).map(|g| g.cause).collect();
    assert_eq!(in_range, [ConnectionLost]);
    assert!((c.gap_seconds(t(20.0), t(40.0)) - 1.6).abs() < 1e-9);
    assert!((c.gap_seconds(t(0.0), t(100.0)) - (10.6 + 1.6 + 40.0)).abs() < 1e-9);
    let next = c.next_gap(t(20.0), t(45.0)).map(|g| g.start);
    assert_eq!(next, Some(Some(t(30.0))));
    assert_eq!(c.next_gap(t(20.0), t(29.0)), None, "not yet at the gap");
    assert_eq!(c.next_gap(t(32.0), t(50.0)), None, "past it");
    assert_eq!(c.record_end(), Some(t(60.0)));
    assert_eq!(c.first_verified(), Some(t(10.6)));
}

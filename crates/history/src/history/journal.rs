//! Observations from a journal directory: the same marks the database source finds, read in one
//! pass over the records (a journal is a complete source: every frame, heartbeats included, every
//! feed event, every book state, and its damage).
//!
//! Only book frames with a verdict are decoded (the verified ones for their symbol and Kraken
//! timestamp: a snapshot is a mark, and a mismatch needs the last verified message before it;
//! the failed ones for the mismatch itself). Times are cut to whole microseconds, as the database
//! stores them, so that both sources of one recording give equal observations.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use super::HistoryError;
use super::model::{Connection, Damage, Mark, Observation, Observed, StreamId};
use crate::journal::{IDENTITY_FILE, JournalReader, ReadItem};
use crate::kraken::{self, BookKind, Frame};
use crate::record::{EventKind, RecordBody};
use crate::time::Timestamp;

/// How far before a mismatch event its frame may be (as in the database source).
const MISMATCH_LOOKBACK: i64 = 100_000;

/// A frame's seq and receive time.
type FrameAt = (i64, Timestamp);

/// A time as the database stores it: whole microseconds.
fn micros(t: Timestamp) -> Timestamp {
    Timestamp::from_pg_micros(t.pg_micros())
}

/// The collector identity of the journal at `dir` (its `COLLECTOR` file), else the directory's
/// name.
pub fn collector_of(dir: &Path) -> String {
    match std::fs::read_to_string(dir.join(IDENTITY_FILE)) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_owned(),
        _ => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "journal".to_owned()),
    }
}

/// What the journal at `dir` holds of each of `symbols` (in the order given). Empty when
/// `collector` names another collector than the journal's.
pub fn observe(
    dir: &Path,
    symbols: &[String],
    collector: Option<&str>,
) -> Result<Vec<Observed>, HistoryError> {
    let me = collector_of(dir);
    let empty = || {
        symbols
            .iter()
            .map(|s| Observed {
                symbol: s.clone(),
                ..Observed::default()
            })
            .collect()
    };
    if collector.is_some_and(|c| c != me) {
        return Ok(empty());
    }
    let wanted: HashSet<&str> = symbols.iter().map(String::as_str).collect();
    let mut marks: BTreeMap<String, Vec<Observation>> = BTreeMap::new();
    // Per connection: first and last frame.
    let mut frames: HashMap<u64, (FrameAt, FrameAt)> = HashMap::new();
    let mut lost: HashSet<u64> = HashSet::new();
    let mut damage: Vec<Damage> = Vec::new();
    // The last frame of each (connection, symbol) that verified: (seq, Kraken).
    let mut verified: HashMap<(u64, String), (i64, Timestamp)> = HashMap::new();
    // The last frame of each (connection, symbol) whose checksum failed: (seq, received, Kraken).
    let mut failed: HashMap<(u64, String), (i64, Timestamp, Timestamp)> = HashMap::new();
    // Book states already taken after each damage: (damage index, connection, symbol).
    let mut states_taken: HashSet<(usize, u64, String)> = HashSet::new();
    let stream = |conn: u64| StreamId {
        collector: me.clone(),
        conn_id: conn as i64,
    };
    let mut reader = JournalReader::open(dir, 0)?;
    while let Some(item) = reader.next_item()? {
        let view = match item {
            ReadItem::Damage(d) => {
                if d.kind.is_loss() {
                    damage.push(Damage {
                        collector: me.clone(),
                        first_seq: d.first_seq as i64,
                        before: d.before.map(micros),
                        after: d.after.or(d.before).map(micros),
                    });
                }
                continue;
            }
            ReadItem::Record(view) => view,
        };
        let seq = view.seq as i64;
        let received = micros(view.received_at);
        let conn = view.conn_id;
        if let Some(frame) = view.frame() {
            frames
                .entry(conn)
                .and_modify(|(_, last)| *last = (seq, received))
                .or_insert(((seq, received), (seq, received)));
            if frame.checksum_ok.is_none() {
                continue;
            }
            let Ok(text) = std::str::from_utf8(frame.bytes) else {
                continue;
            };
            let Ok(Frame::Book(book)) = kraken::decode(text) else {
                continue;
            };
            // The database's message row: the first data item's symbol and timestamp.
            let Some(first) = book.data.first() else {
                continue;
            };
            let symbol = first.symbol.as_ref();
            if !wanted.contains(symbol) {
                continue;
            }
            let kraken = micros(first.timestamp.unwrap_or(received));
            if frame.checksum_ok == Some(true) {
                if book.kind == BookKind::Snapshot {
                    marks
                        .entry(symbol.to_owned())
                        .or_default()
                        .push(Observation {
                            stream: stream(conn),
                            seq,
                            received,
                            mark: Mark::Snapshot { kraken },
                        });
                }
                verified.insert((conn, symbol.to_owned()), (seq, kraken));
            } else {
                failed.insert((conn, symbol.to_owned()), (seq, received, kraken));
            }
            continue;
        }
        let Some(record) = view.to_record() else {
            continue;
        };
        match record.body {
            RecordBody::Event(event) => match (event.kind, event.symbol) {
                (EventKind::Subscribed, Some(symbol)) if wanted.contains(symbol.as_str()) => {
                    marks.entry(symbol).or_default().push(Observation {
                        stream: stream(conn),
                        seq,
                        received,
                        mark: Mark::Subscribed,
                    });
                }
                (EventKind::ChecksumMismatch, Some(symbol)) if wanted.contains(symbol.as_str()) => {
                    let key = (conn, symbol);
                    let event_seq = seq;
                    let (seq, received, kraken) = failed
                        .get(&key)
                        .copied()
                        .filter(|&(s, _, _)| s < event_seq && s > event_seq - MISMATCH_LOOKBACK)
                        .unwrap_or((event_seq, received, received));
                    let last_verified = verified
                        .get(&key)
                        .filter(|&&(s, _)| s < seq && s > event_seq - MISMATCH_LOOKBACK)
                        .map(|&(_, t)| t);
                    marks.entry(key.1).or_default().push(Observation {
                        stream: stream(conn),
                        seq,
                        received,
                        mark: Mark::Mismatch {
                            kraken,
                            last_verified,
                        },
                    });
                }
                (EventKind::Disconnected, _) => {
                    lost.insert(conn);
                }
                _ => {}
            },
            RecordBody::BookState(state) if wanted.contains(state.symbol.as_str()) => {
                // The first state of each connection after each damage (as the database source).
                let mut take = false;
                for (i, d) in damage.iter().enumerate() {
                    if d.first_seq < seq && states_taken.insert((i, conn, state.symbol.clone())) {
                        take = true;
                    }
                }
                if take {
                    marks.entry(state.symbol).or_default().push(Observation {
                        stream: stream(conn),
                        seq,
                        received,
                        mark: Mark::State {
                            kraken: micros(state.timestamp),
                        },
                    });
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(symbols.len());
    for symbol in symbols {
        let observations = marks.get(symbol).cloned().unwrap_or_default();
        let conns: BTreeSet<i64> = observations.iter().map(|o| o.stream.conn_id).collect();
        let connections = conns
            .iter()
            .filter_map(|&c| {
                let (first, last) = frames.get(&(c as u64))?;
                Some(Connection {
                    id: stream(c as u64),
                    first_seq: first.0,
                    last_seq: last.0,
                    first_received: first.1,
                    last_received: last.1,
                    loss_recorded: lost.contains(&(c as u64)),
                })
            })
            .collect();
        let mut o = Observed {
            symbol: symbol.clone(),
            connections,
            observations,
            damage: if conns.is_empty() {
                Vec::new()
            } else {
                damage.clone()
            },
        };
        o.normalize();
        out.push(o);
    }
    Ok(out)
}

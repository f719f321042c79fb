//! What the writer decides when it opens a journal: where the intact records end, which bytes
//! are damage (kept, reported) and which are a torn tail (cut), and the `seq` the new segment
//! starts at so that no seq that could have been synced is ever used again.
//!
//! [`plan`] reads (through the [`Fs`] seam) and decides; it changes nothing. The writer carries
//! the plan out in the order the crash-safety argument of [`super`] needs: the new segment,
//! declaring the skipped seqs in its header, is durable before a single byte is cut.

use std::path::PathBuf;

use super::format::max_records;
use super::io::Fs;
use super::scan::scan_segment;
use super::segment::{SegmentFile, read_segment};
use super::{Damage, DamageKind, JournalError};
use crate::time::Timestamp;

/// What opening the journal found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The `seq` of the last intact record (0 for a new journal).
    pub last_seq: u64,
    /// The `seq` the new segment starts at: `last_seq + 1`, or more after a torn tail (the seqs
    /// in between are skipped, never reused).
    pub next_seq: u64,
    /// The highest connection id used so far.
    pub conn_id_base: u64,
    /// Bytes cut from a torn tail (a record half-written when the process or machine stopped).
    pub torn_bytes: u64,
    /// What recovery found missing in the last segment: damage followed by intact records
    /// (kept and reported), lost records of a closed segment, and the seqs skipped after a torn
    /// tail ([`DamageKind::TornTail`], not a loss).
    pub damage: Vec<Damage>,
}

/// Where a torn tail was: segment, offset, bytes.
type TornAt = (PathBuf, u64, u64);

/// What to do at open.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub recovery: Recovery,
    /// The new segment header's `prev_seq`: the last seq known intact (or declared so).
    pub prev_seq: u64,
    /// The segment whose torn tail to cut, and where (after the new segment is durable).
    pub cut: Option<(SegmentFile, u64)>,
    /// Trailing segments that hold no record: removed once the new segment is durable (one named
    /// like the new segment is replaced by it instead).
    pub empty: Vec<SegmentFile>,
    /// The last intact record's receive time.
    pub last_received: Option<Timestamp>,
    /// What to say in the `JournalRecovered` event when seqs are skipped.
    pub skip_detail: Option<String>,
}

/// Decides how to open the journal whose segments are `segments` (in `seq` order).
pub(crate) fn plan(fs: &dyn Fs, segments: &[SegmentFile]) -> Result<Plan, JournalError> {
    // The new segment must start at or after every segment's first seq: an empty segment's
    // header was synced before any record could be written into it, so its name is a promise.
    let mut floor = 1u64;
    // The smallest prev_seq declared by a trailing segment without records.
    let mut declared: Option<u64> = None;
    let mut conn_id_base = 0u64;
    let mut empty = Vec::new();
    let mut empty_tail: Option<(PathBuf, u64, u64)> = None;
    for segment in segments.iter().rev() {
        let (bytes, unreadable) = read_segment(fs, segment)?;
        let scan = scan_segment(&bytes, segment.first_seq);
        floor = floor.max(segment.first_seq);
        if let Some(h) = scan.header.filter(|_| !scan.header_damaged) {
            conn_id_base = conn_id_base.max(h.conn_id_base);
        }
        conn_id_base = conn_id_base.max(scan.max_conn_id);
        // A damaged compressed stream hides an unknown number of bytes: bound them by the most
        // zstd can expand a file (well under 2^17 to 1).
        let tail = match (scan.tail, unreadable) {
            (tail, false) => tail,
            (tail, true) => {
                let compressed = fs
                    .len(&segment.path)
                    .map_err(|e| JournalError::io(&segment.path, e))?;
                let offset = tail.map_or(bytes.len() as u64, |t| t.0);
                Some((offset, compressed.saturating_mul(1 << 17)))
            }
        };
        let Some((last, last_received)) = scan.last else {
            // No intact record: a segment created but never written (or whose first record was
            // torn). Its bytes could hold records too.
            if let Some((offset, n)) = tail {
                floor = floor.max(segment.first_seq.saturating_add(max_records(n)));
                empty_tail = Some((segment.path.clone(), offset, n));
            }
            if let Some(h) = scan.header.filter(|_| !scan.header_damaged) {
                declared = Some(declared.map_or(h.prev_seq, |d| d.min(h.prev_seq)));
            }
            if !segment.compressed {
                empty.push(segment.clone());
            }
            continue;
        };
        let mut recovery = Recovery {
            last_seq: last,
            conn_id_base,
            ..Recovery::default()
        };
        for &(offset, n, first_seq, last_seq) in &scan.damage {
            if first_seq > last_seq {
                tracing::warn!(
                    path = %segment.path.display(),
                    offset,
                    bytes = n,
                    "journal: damaged bytes between two intact records (no record lost)"
                );
                continue;
            }
            recovery.damage.push(Damage {
                kind: DamageKind::Corrupt,
                segment: segment.path.clone(),
                offset,
                bytes: n,
                first_seq,
                last_seq,
                before: None,
                after: None,
            });
        }
        let mut prev_seq = last;
        let mut cut = None;
        let mut next = last.saturating_add(1);
        let mut skip_detail = None;
        let mut torn_at = None;
        match (tail, declared) {
            // A later segment was started when these records were intact: the tail is damage
            // of a closed segment, lost; it is not cut.
            (Some((offset, n)), Some(d)) if d > last => {
                recovery.damage.push(Damage {
                    kind: DamageKind::TruncatedSegment,
                    segment: segment.path.clone(),
                    offset,
                    bytes: n,
                    first_seq: last + 1,
                    last_seq: d,
                    before: Some(last_received),
                    after: None,
                });
                prev_seq = d;
                next = next.max(d.saturating_add(1)).max(last + 1 + max_records(n));
            }
            (Some((offset, n)), _) => {
                // The torn tail: whatever the process or machine was writing when it stopped.
                // Its bytes might have held records that were synced (a damaged synced record
                // looks the same), so its seqs are skipped, never given to new records.
                next = next.saturating_add(max_records(n));
                if !segment.compressed && !unreadable {
                    cut = Some((segment.clone(), offset));
                    recovery.torn_bytes = n;
                }
                torn_at = Some((segment.path.clone(), offset, n));
                skip_detail = Some(format!(
                    "cut {n} bytes at offset {offset} of {}",
                    segment.path.display()
                ));
            }
            (None, Some(d)) if d > last => {
                // Records a later segment's writer knew intact are gone without a trace here
                // (the segment was cut at a record boundary).
                recovery.damage.push(Damage {
                    kind: DamageKind::TruncatedSegment,
                    segment: segment.path.clone(),
                    offset: bytes.len() as u64,
                    bytes: 0,
                    first_seq: last + 1,
                    last_seq: d,
                    before: Some(last_received),
                    after: None,
                });
                prev_seq = d;
                next = next.max(d.saturating_add(1));
            }
            (None, _) => {}
        }
        if let Some((path, offset, n)) = &empty_tail {
            skip_detail.get_or_insert_with(|| {
                format!(
                    "{n} bytes at offset {offset} of {} held no intact record",
                    path.display()
                )
            });
            torn_at.get_or_insert_with(|| (path.clone(), *offset, *n));
        }
        next = next.max(floor);
        if next > prev_seq + 1 {
            skip_detail.get_or_insert_with(|| {
                "skipped after a torn tail cut by an earlier start".to_owned()
            });
        }
        recovery.next_seq = next;
        return Ok(finish(
            recovery,
            prev_seq,
            cut,
            empty,
            Some(last_received),
            skip_detail.zip(Some(torn_at)),
        ));
    }
    // No segment holds a record: a new journal, or one whose records all expired.
    let prev_seq = declared.unwrap_or(0);
    let next = floor.max(prev_seq + 1);
    let recovery = Recovery {
        last_seq: prev_seq,
        next_seq: next,
        conn_id_base,
        ..Recovery::default()
    };
    let detail = empty_tail.map(|(path, offset, n)| {
        (
            format!(
                "{n} bytes at offset {offset} of {} held no intact record",
                path.display()
            ),
            Some((path, offset, n)),
        )
    });
    Ok(finish(recovery, prev_seq, None, empty, None, detail))
}

fn finish(
    mut recovery: Recovery,
    prev_seq: u64,
    cut: Option<(SegmentFile, u64)>,
    empty: Vec<SegmentFile>,
    last_received: Option<Timestamp>,
    detail: Option<(String, Option<TornAt>)>,
) -> Plan {
    let skipped = recovery.next_seq > prev_seq + 1;
    let (detail, torn_at) = detail.unzip();
    if skipped {
        let (segment, offset, bytes) = torn_at.flatten().unwrap_or_default();
        recovery.damage.push(Damage {
            kind: DamageKind::TornTail,
            segment,
            offset,
            bytes,
            first_seq: prev_seq + 1,
            last_seq: recovery.next_seq - 1,
            before: last_received,
            after: None,
        });
    }
    Plan {
        recovery,
        prev_seq,
        cut,
        empty,
        last_received,
        skip_detail: if skipped { detail } else { None },
    }
}

//! Properties of the reader (and recovery) over arbitrary bytes and over mutated valid journals:
//! never a panic, never an intact record dropped, and damage items that cover exactly the seqs
//! that did not come back.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;

use super::format::{SegmentHeader, encode_record};
use super::io::Fs;
use super::segment::segment_name;
use super::sim::SimDisk;
use super::*;
use crate::record::{FrameRecord, Record, RecordBody};
use crate::time::Timestamp;

fn dir() -> PathBuf {
    PathBuf::from("/sim/journal")
}

fn record(seq: u64, size: usize) -> Record {
    Record {
        seq,
        received_at: Timestamp::from_unix_nanos(seq as i64 * 1000),
        conn_id: 1 + seq / 40,
        conn_seq: seq,
        body: RecordBody::Frame(FrameRecord {
            bytes: format!("{{\"n\":{seq},\"p\":\"{}\"}}", "z".repeat(size)).into_bytes(),
            checksum_ok: Some(seq.is_multiple_of(2)),
            best_bid: None,
            best_ask: None,
        }),
    }
}

/// A journal of `sizes.len()` records split into segments before the records in `splits`:
/// each segment's bytes, and the byte range of each record in its segment.
struct Built {
    records: Vec<Record>,
    segments: Vec<(u64, Vec<u8>)>,
    /// (segment index, start, end) of each record.
    at: Vec<(usize, usize, usize)>,
}

fn build(sizes: &[usize], splits: &BTreeSet<usize>) -> Built {
    let mut built = Built {
        records: Vec::new(),
        segments: Vec::new(),
        at: Vec::new(),
    };
    for (i, &size) in sizes.iter().enumerate() {
        let seq = i as u64 + 1;
        if i == 0 || splits.contains(&i) {
            let header = SegmentHeader {
                first_seq: seq,
                conn_id_base: 0,
                created: Timestamp::from_unix_nanos(1),
                prev_seq: seq - 1,
            };
            built.segments.push((seq, header.encode().to_vec()));
        }
        let r = record(seq, size);
        let index = built.segments.len() - 1;
        let bytes = &mut built.segments[index].1;
        let start = bytes.len();
        encode_record(&r, bytes);
        built.at.push((index, start, bytes.len()));
        built.records.push(r);
    }
    built
}

fn store(disk: &SimDisk, segments: &[(u64, Vec<u8>)]) -> Arc<dyn Fs> {
    let fs = disk.boot();
    fs.create_dir_all(&dir()).unwrap();
    for (first, bytes) in segments {
        let mut f = fs.create(&dir().join(segment_name(*first, false))).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_data().unwrap();
    }
    fs.sync_dir(&dir()).unwrap();
    fs
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        seg: usize,
        at: usize,
        mask: u8,
    },
    Zero {
        seg: usize,
        at: usize,
        len: usize,
    },
    Junk {
        seg: usize,
        at: usize,
        bytes: Vec<u8>,
    },
    Insert {
        seg: usize,
        at: usize,
        bytes: Vec<u8>,
    },
    Truncate {
        seg: usize,
        at: usize,
    },
    Remove {
        seg: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<usize>(), 1u8..=255).prop_map(|(seg, at, mask)| Mutation::Flip {
            seg,
            at,
            mask
        }),
        (any::<usize>(), any::<usize>(), 1usize..600).prop_map(|(seg, at, len)| Mutation::Zero {
            seg,
            at,
            len
        }),
        (
            any::<usize>(),
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..300)
        )
            .prop_map(|(seg, at, bytes)| Mutation::Junk { seg, at, bytes }),
        (
            any::<usize>(),
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..100)
        )
            .prop_map(|(seg, at, bytes)| Mutation::Insert { seg, at, bytes }),
        (any::<usize>(), any::<usize>()).prop_map(|(seg, at)| Mutation::Truncate { seg, at }),
        any::<usize>().prop_map(|seg| Mutation::Remove { seg }),
    ]
}

/// Applies `m` to the built journal: the mutated segments (`None`: removed), the records still
/// intact, and whether the end of the journal was cut (records lost there leave no trace).
fn apply(built: &Built, m: &Mutation) -> (Vec<Option<Vec<u8>>>, BTreeSet<u64>, bool) {
    let mut segs: Vec<Option<Vec<u8>>> = built
        .segments
        .iter()
        .map(|(_, b)| Some(b.clone()))
        .collect();
    let n = segs.len();
    // The byte range touched, in one segment (`usize::MAX`: to its end).
    let (seg, from, to, end_cut) = match m {
        Mutation::Flip { seg, at, mask } => {
            let s = seg % n;
            let b = segs[s].as_mut().unwrap();
            let at = at % b.len();
            b[at] ^= mask;
            (s, at, at + 1, false)
        }
        Mutation::Zero { seg, at, len } => {
            let s = seg % n;
            let b = segs[s].as_mut().unwrap();
            let at = at % b.len();
            let end = (at + len).min(b.len());
            b[at..end].fill(0);
            (s, at, end, false)
        }
        Mutation::Junk { seg, at, bytes } => {
            let s = seg % n;
            let b = segs[s].as_mut().unwrap();
            let at = at % b.len();
            let end = (at + bytes.len()).min(b.len());
            b[at..end].copy_from_slice(&bytes[..end - at]);
            (s, at, end, false)
        }
        Mutation::Insert { seg, at, bytes } => {
            let s = seg % n;
            let b = segs[s].as_mut().unwrap();
            let at = at % (b.len() + 1);
            b.splice(at..at, bytes.iter().copied());
            // A record is damaged only if the insertion falls strictly inside it.
            (s, at, at, false)
        }
        Mutation::Truncate { seg, at } => {
            let s = seg % n;
            let b = segs[s].as_mut().unwrap();
            let at = at % b.len();
            b.truncate(at);
            (s, at, usize::MAX, s == n - 1)
        }
        Mutation::Remove { seg } => {
            let s = seg % n;
            segs[s] = None;
            (s, 0, usize::MAX, s == n - 1)
        }
    };
    let intact = built
        .records
        .iter()
        .zip(&built.at)
        .filter(|(_, (s, start, end))| {
            *s != seg || {
                // Untouched: entirely before or after the touched range (an insertion touches
                // a record only strictly inside it).
                if from == to {
                    from <= *start || from >= *end
                } else {
                    *end <= from || *start >= to
                }
            }
        })
        .map(|(r, _)| r.seq)
        .collect();
    (segs, intact, end_cut)
}

fn read(fs: &Arc<dyn Fs>, mode: ReadMode) -> Result<Vec<Item>, JournalError> {
    let mut reader = JournalReader::open_with(Arc::clone(fs), &dir(), 0, mode)?;
    let mut out = Vec::new();
    while let Some(item) = reader.next_owned()? {
        out.push(item);
        assert!(out.len() < 100_000, "the reader does not stop");
    }
    Ok(out)
}

/// The ordering every read must have: items in strictly increasing seqs, never overlapping.
fn check_order(items: &[Item]) -> (BTreeSet<u64>, Vec<Damage>) {
    let mut covered = 0u64;
    let mut returned = BTreeSet::new();
    let mut damage = Vec::new();
    for item in items {
        match item {
            Item::Record(r) => {
                assert!(r.seq > covered, "record {} after {covered}", r.seq);
                covered = r.seq;
                returned.insert(r.seq);
            }
            Item::Damage(d) => {
                assert!(
                    d.first_seq > covered && d.last_seq >= d.first_seq,
                    "{d:?} after {covered}"
                );
                covered = d.last_seq;
                damage.push(d.clone());
            }
        }
    }
    (returned, damage)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn a_mutated_journal_keeps_every_intact_record_and_names_every_missing_seq(
        sizes in proptest::collection::vec(0usize..200, 1..60),
        splits in proptest::collection::btree_set(1usize..60, 0..5),
        m in mutation(),
    ) {
        let built = build(&sizes, &splits);
        let (segs, intact, end_cut) = apply(&built, &m);
        let disk = SimDisk::new(1);
        let stored: Vec<(u64, Vec<u8>)> = built
            .segments
            .iter()
            .zip(segs)
            .filter_map(|((first, _), b)| b.map(|b| (*first, b)))
            .collect();
        let fs = store(&disk, &stored);
        let n = built.records.len() as u64;
        for mode in [ReadMode::Closed, ReadMode::Auto] {
            let items = read(&fs, mode).unwrap();
            let (returned, damage) = check_order(&items);
            // What comes back is what was written.
            for item in &items {
                if let Item::Record(r) = item {
                    prop_assert_eq!(r, &built.records[r.seq as usize - 1]);
                }
            }
            // Every intact record comes back.
            let dropped: Vec<&u64> = intact.difference(&returned).collect();
            prop_assert!(dropped.is_empty(), "intact records dropped: {:?}; damage {:?}", dropped, damage);
            // Every seq that does not come back is named by damage, and only those are.
            let mut covered = returned.clone();
            for d in &damage {
                prop_assert!(!matches!(d.kind, DamageKind::Expired), "{:?}", d);
                for s in d.first_seq..=d.last_seq {
                    prop_assert!(covered.insert(s), "seq {} both returned and damaged", s);
                }
            }
            let top = covered.iter().next_back().copied().unwrap_or(0);
            prop_assert_eq!(covered.len() as u64, top, "a seq below {} is neither returned nor named", top);
            if !end_cut {
                prop_assert!(top >= n, "seqs up to {} unaccounted for (only {})", n, top);
            }
            // Only the journal's end can be a torn tail (reported as the last item).
            for d in damage.iter().rev().skip(1) {
                prop_assert!(d.kind.is_loss(), "{:?}", d);
            }
        }
        // Recovery never panics, and never starts below a record a reader returned.
        let (w, recovery) = JournalWriter::open({
            let mut c = JournalConfig::new(dir());
            c.compression_level = 0;
            c.fs = Arc::clone(&fs);
            c
        }).unwrap();
        let items = read(&disk.boot(), ReadMode::Follow).unwrap();
        let (returned, _) = check_order(&items);
        prop_assert!(returned.iter().all(|&s| s < recovery.next_seq));
        drop(w);
    }

    #[test]
    fn arbitrary_bytes_never_make_a_reader_or_recovery_panic(
        files in proptest::collection::vec(
            (1u64..200, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..400)),
            1..4,
        ),
    ) {
        let disk = SimDisk::new(2);
        let segments: Vec<(u64, Vec<u8>)> = files
            .into_iter()
            .map(|(first, with_header, mut bytes)| {
                if with_header {
                    // A valid header, so the bytes after it are read as records.
                    let header = SegmentHeader {
                        first_seq: first,
                        conn_id_base: 0,
                        created: Timestamp::from_unix_nanos(0),
                        prev_seq: first - 1,
                    };
                    bytes.splice(0..0, header.encode());
                }
                (first, bytes)
            })
            .collect();
        let fs = store(&disk, &segments);
        for mode in [ReadMode::Closed, ReadMode::Auto, ReadMode::Follow] {
            let items = read(&fs, mode).unwrap();
            check_order(&items);
        }
        let opened = JournalWriter::open({
            let mut c = JournalConfig::new(dir());
            c.compression_level = 0;
            c.fs = Arc::clone(&fs);
            c
        });
        prop_assert!(opened.is_ok(), "{:?}", opened.err());
    }
}

//! What an export or a plot reads: the symbols, the time range and the collector whose record is
//! read, checked against the database before any work starts, and the coverage of each symbol's
//! record.
//!
//! What must hold:
//! - a symbol never recorded, a range in which a symbol has no book message and no verified book
//!   (a quiet pair's book is verified long after its last message: such a range is read), or a
//!   range recorded by several collectors (without `--collector`, by a reader that cannot merge
//!   them) is refused with a one-line error that says what is recorded, before a file is written;
//! - a reader that merges collectors (the incremental export) gets every collector that recorded
//!   the range, in name order, in [`Selection::merged`]; `--collector` still restricts it to one;
//! - every check uses an index (`(symbol, timestamp)` of the messages, the checkpoints table, the
//!   coverage model's lookups): none scans a day of rows;
//! - which instants have a book is the coverage model's to say ([`crate::history`], the same
//!   answer `book --at` gets), and `coverage` here is the one place the exports, the plot and
//!   `replay --serve` ask it;
//! - a reader that follows the merged history (the incremental export, `replay --serve`: the
//!   segments of [`crate::export::incremental::timeline`]) rebuilds a segment's book from the
//!   start `segment_start` finds on that segment's stream and span, and nowhere else.
//!
//! It sits beside [`crate::export`], [`crate::plot`] and [`crate::replay`], not inside any of
//! them, because they all use it.

use tokio_postgres::Client;

use crate::export::incremental::Segment;
use crate::history::{Coverage, Source};
use crate::readback::{BookCursor, ReadbackError, Start};
use crate::store::StoreError;
use crate::time::Timestamp;

/// The largest snapshot depth an export or a plot reads (Kraken's deepest book).
pub const MAX_SNAPSHOT_DEPTH: usize = 1000;

/// The coverage of `symbol` on `collector`'s record (its streams only: an export follows one
/// collector's record): the one place exports and plots ask which instants have a book.
pub(crate) async fn coverage(
    client: &Client,
    collector: &str,
    symbol: &str,
) -> Result<Coverage, ReadbackError> {
    coverage_of(client, Some(collector), symbol).await
}

/// The coverage of `symbol` on `collector`'s record, or on every collector's (`None`: the union
/// the merged export follows).
pub(crate) async fn coverage_of(
    client: &Client,
    collector: Option<&str>,
    symbol: &str,
) -> Result<Coverage, ReadbackError> {
    Ok(Source::Database(client)
        .coverage_of(symbol, collector)
        .await?)
}

/// The latest starting point (snapshot or book state) of `symbol` at or before `at` on the
/// stream `segment` follows, inside the segment's verified span: where a reader following the
/// merged history rebuilds that stream's book (the incremental export's opening books,
/// `replay --serve`'s subscriptions).
pub(crate) async fn segment_start(
    client: &Client,
    symbol: &str,
    segment: &Segment,
    at: Timestamp,
) -> Result<Option<Start>, ReadbackError> {
    let id = &segment.stream;
    BookCursor::find_start_in_span(
        client,
        symbol,
        at,
        &id.collector,
        id.conn_id,
        segment.start_seq,
        segment.last_seq,
    )
    .await
}

/// What an export or a plot reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The symbols, as given.
    pub symbols: Vec<String>,
    /// The range's start (inclusive), on Kraken's clock (the `timestamp` column).
    pub from: Timestamp,
    /// The range's end (exclusive).
    pub to: Timestamp,
    /// The collector whose record is read (the first of [`merged`](Self::merged) when several
    /// are).
    pub collector: String,
    /// The collectors whose records are merged, in name order, when several recorded the range
    /// and the reader merges them; empty when one collector's record is read.
    pub merged: Vec<String>,
}

impl Selection {
    /// The collectors read: [`merged`](Self::merged), or the one.
    pub fn collectors(&self) -> Vec<String> {
        if self.merged.is_empty() {
            vec![self.collector.clone()]
        } else {
            self.merged.clone()
        }
    }

    /// How the collectors read are named in reports and file metadata (`A+B` when merged).
    pub fn collector_label(&self) -> String {
        if self.merged.is_empty() {
            self.collector.clone()
        } else {
            self.merged.join("+")
        }
    }
}

/// Why a selection was refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading back failed.
    #[error(transparent)]
    Readback(#[from] crate::readback::ReadbackError),
    /// `--from` is not before `--to`.
    #[error("the range is empty: --from {from} is not before --to {to}")]
    EmptyRange {
        /// Start.
        from: Timestamp,
        /// End.
        to: Timestamp,
    },
    /// No symbol given.
    #[error("no symbol given: name one, e.g. --symbol BTC/USD")]
    NoSymbol,
    /// A symbol that was never recorded.
    #[error("unknown symbol {symbol}: it was never recorded here ({known})")]
    UnknownSymbol {
        /// The symbol.
        symbol: String,
        /// What is recorded, for the message.
        known: String,
    },
    /// A symbol with no book message in the range.
    #[error("no data of {symbol} from {from} to {to}: {recorded}")]
    NoData {
        /// The symbol.
        symbol: String,
        /// Start.
        from: Timestamp,
        /// End.
        to: Timestamp,
        /// What is recorded, for the message.
        recorded: String,
    },
    /// Several collectors recorded the symbols in the range, and the reader reads one.
    #[error(
        "the range was recorded by several collectors ({collectors}): choose one with --collector NAME (only the incremental export merges them)"
    )]
    SeveralCollectors {
        /// Their names.
        collectors: String,
    },
    /// The collector asked for recorded nothing of the symbols in the range.
    #[error("collector {collector} recorded nothing of {symbols} from {from} to {to}{others}")]
    CollectorHasNoData {
        /// The collector.
        collector: String,
        /// The symbols.
        symbols: String,
        /// Start.
        from: Timestamp,
        /// End.
        to: Timestamp,
        /// Collectors that did, for the message.
        others: String,
    },
    /// The rows in range carry no collector (recorded by the original tool).
    #[error(
        "the book messages from {from} to {to} carry no collector and sequence number (recorded by the original tool?): they cannot be put back in received order"
    )]
    NoCollector {
        /// Start.
        from: Timestamp,
        /// End.
        to: Timestamp,
    },
}

/// Checks the symbols and the range, and finds the collector whose record is read; without
/// `collector`, when several recorded the range, all of them if `merge` (the reader merges their
/// streams), else the selection is refused.
pub async fn select(
    client: &Client,
    symbols: &[String],
    from: Timestamp,
    to: Timestamp,
    collector: Option<&str>,
    merge: bool,
) -> Result<Selection, SourceError> {
    if from >= to {
        return Err(SourceError::EmptyRange { from, to });
    }
    if symbols.is_empty() {
        return Err(SourceError::NoSymbol);
    }
    for symbol in symbols {
        check_symbol(client, symbol, from, to).await?;
    }
    let mut merged = Vec::new();
    let collector = match collector {
        Some(c) => {
            if !collector_has_data(client, c, symbols, from, to).await? {
                let others = collectors_with_data(client, symbols, from, to).await?;
                return Err(SourceError::CollectorHasNoData {
                    collector: c.to_owned(),
                    symbols: symbols.join(", "),
                    from,
                    to,
                    others: if others.is_empty() {
                        String::new()
                    } else {
                        format!(" (recorded by: {})", others.join(", "))
                    },
                });
            }
            c.to_owned()
        }
        None => {
            let mut found = collectors_with_data(client, symbols, from, to).await?;
            match found.len() {
                0 => return Err(SourceError::NoCollector { from, to }),
                1 => found.remove(0),
                _ if merge => {
                    merged = found.clone();
                    found.remove(0)
                }
                _ => {
                    return Err(SourceError::SeveralCollectors {
                        collectors: found.join(", "),
                    });
                }
            }
        }
    };
    Ok(Selection {
        symbols: symbols.to_vec(),
        from,
        to,
        collector,
        merged,
    })
}

/// The symbol is recorded, and has a book message in the range.
async fn check_symbol(
    client: &Client,
    symbol: &str,
    from: Timestamp,
    to: Timestamp,
) -> Result<(), SourceError> {
    let extent = client
        .query_one(
            "SELECT (SELECT \"timestamp\" FROM krakenbook_book
                      WHERE symbol = $1 ORDER BY \"timestamp\" LIMIT 1),
                    (SELECT \"timestamp\" FROM krakenbook_book
                      WHERE symbol = $1 ORDER BY \"timestamp\" DESC LIMIT 1),
                    EXISTS (SELECT 1 FROM krakenbook_book
                      WHERE symbol = $1 AND \"timestamp\" >= $2 AND \"timestamp\" < $3)",
            &[&symbol, &from, &to],
        )
        .await
        .map_err(StoreError::db("checking the symbol"))?;
    let first: Option<Timestamp> = extent.get(0);
    let last: Option<Timestamp> = extent.get(1);
    // No message in range: the range is still read where the book is verified.
    let in_range: bool =
        extent.get(2) || (first.is_some() && covered_in(client, symbol, None, from, to).await?);
    match (first, last) {
        (Some(first), Some(last)) if !in_range => Err(SourceError::NoData {
            symbol: symbol.to_owned(),
            from,
            to,
            recorded: format!("it is recorded from {first} to {last}"),
        }),
        (Some(_), Some(_)) => Ok(()),
        _ => {
            let known = crate::readback::query::recorded_symbols(client).await?;
            Err(SourceError::UnknownSymbol {
                symbol: symbol.to_owned(),
                known: if known.is_empty() {
                    "no book is recorded in this database".to_owned()
                } else {
                    format!("recorded: {}", known.join(", "))
                },
            })
        }
    }
}

async fn collector_has_data(
    client: &Client,
    collector: &str,
    symbols: &[String],
    from: Timestamp,
    to: Timestamp,
) -> Result<bool, SourceError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM krakenbook_book
                WHERE symbol = ANY($1)
                  AND collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $2)
                  AND \"timestamp\" >= $3 AND \"timestamp\" < $4)",
            &[&symbols, &collector, &from, &to],
        )
        .await
        .map_err(StoreError::db("checking the collector"))?;
    if row.get(0) {
        return Ok(true);
    }
    for symbol in symbols {
        if covered_in(client, symbol, Some(collector), from, to).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the coverage model verifies `symbol`'s book somewhere in `[from, to)`, on
/// `collector`'s record (any collector's when `None`): a quiet pair's book stays verified long
/// after its last message.
async fn covered_in(
    client: &Client,
    symbol: &str,
    collector: Option<&str>,
    from: Timestamp,
    to: Timestamp,
) -> Result<bool, SourceError> {
    let coverage = Source::Database(client)
        .coverage_of(symbol, collector)
        .await
        .map_err(ReadbackError::from)?;
    Ok(coverage
        .spans
        .iter()
        .any(|iv| iv.start < to && from < iv.end))
}

/// The collectors (from the writers' checkpoints) with a book message of the symbols in range.
async fn collectors_with_data(
    client: &Client,
    symbols: &[String],
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<String>, SourceError> {
    let known: Vec<String> = client
        .query(
            "SELECT collector FROM krakenbook_checkpoints ORDER BY collector",
            &[],
        )
        .await
        .map_err(StoreError::db("reading the collectors"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut found = Vec::new();
    for c in known {
        if collector_has_data(client, &c, symbols, from, to).await? {
            found.push(c);
        }
    }
    Ok(found)
}

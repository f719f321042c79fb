//! Raw messages: every stored message of the symbols in range (book snapshots and updates, and
//! the subscription acknowledgements that carry the symbol), in received order, with the
//! collector's checksum verdict.
//!
//! Columns: `timestamp` and `local_timestamp` (microseconds), `collector`, `seq` (the received
//! order), `conn_id`, `channel`, `type`, `symbol`, `checksum`, `checksum_ok`, `raw_message`.
//! `raw_message` is the frame as the database holds it: `jsonb`'s text (keys sorted, spacing
//! normalised; every number keeps its digits, `0.00005100` stays `0.00005100`), or the frame's
//! own text when it was not JSON. The frames byte for byte are in the collector's journal.
//!
//! What must hold: one row per stored message, in `seq` order, values as stored.

use futures_util::StreamExt;
use tokio_postgres::Client;

use super::source::Selection;
use super::table::{Cell, Column, ColumnKind};
use super::{ExportError, ExportReport, Sink, Ticker};
use crate::store::StoreError;
use crate::time::Timestamp;

/// The columns.
pub fn columns() -> Vec<Column> {
    vec![
        Column::required("timestamp", ColumnKind::Micros),
        Column::required("local_timestamp", ColumnKind::Micros),
        Column::required("collector", ColumnKind::Text),
        Column::required("seq", ColumnKind::Int),
        Column::nullable("conn_id", ColumnKind::Int),
        Column::required("channel", ColumnKind::Text),
        Column::required("type", ColumnKind::Text),
        Column::nullable("symbol", ColumnKind::Text),
        Column::nullable("checksum", ColumnKind::Int),
        Column::nullable("checksum_ok", ColumnKind::Bool),
        Column::nullable("raw_message", ColumnKind::Text),
    ]
}

const MESSAGES: &str = "SELECT \"timestamp\", received_at, collector, seq, conn_id, channel, message_type, \
    symbol, checksum, checksum_ok, coalesce(raw_message::text, raw_text) \
    FROM kraken_orderbook_messages \
    WHERE symbol = ANY($1) AND collector = $2 AND \"timestamp\" >= $3 AND \"timestamp\" < $4 \
    ORDER BY seq";

/// Writes the messages.
pub(crate) async fn write(
    client: &Client,
    selection: &Selection,
    sink: &mut Sink,
    ticker: &mut Ticker<'_>,
    report: &mut ExportReport,
) -> Result<(), ExportError> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
        &selection.symbols,
        &selection.collector,
        &selection.from,
        &selection.to,
    ];
    let rows = client
        .query_raw(MESSAGES, params)
        .await
        .map_err(StoreError::db("reading the stored messages"))?;
    futures_util::pin_mut!(rows);
    while let Some(r) = rows.next().await {
        let r = r.map_err(StoreError::db("reading the stored messages"))?;
        let ts: Timestamp = r.get(0);
        let received: Timestamp = r.get(1);
        let opt_int = |v: Option<i64>| v.map_or(Cell::Null, Cell::Int);
        sink.write_row(&[
            Cell::Micros(ts.unix_micros()),
            Cell::Micros(received.unix_micros()),
            Cell::Text(r.get(2)),
            Cell::Int(r.get(3)),
            opt_int(r.get(4)),
            Cell::Text(r.get(5)),
            Cell::Text(r.get(6)),
            r.get::<_, Option<&str>>(7).map_or(Cell::Null, Cell::Text),
            opt_int(r.get(8)),
            r.get::<_, Option<bool>>(9).map_or(Cell::Null, Cell::Bool),
            r.get::<_, Option<&str>>(10).map_or(Cell::Null, Cell::Text),
        ])?;
        report.rows += 1;
        report.messages += 1;
        ticker.rows(report.rows, ts);
    }
    Ok(())
}

//! CSV as tardis.dev writes it, with the `csv` crate: a header line, `,` between fields, `\n`
//! after each row, `.` as the decimal mark, times as integer microseconds since the epoch (UTC),
//! booleans as `true`/`false`.
//!
//! Quoting is the `csv` crate's (RFC 4180): a field that holds `,`, `"`, `\r` or `\n` is written
//! between double quotes, with each `"` inside doubled. A missing value (null) and an empty text
//! are both an empty field (no column of an export holds an empty text; Parquet keeps nulls).
//! Decimals are written as their exact text, scale kept (`0.00005100`), never through a float.

use std::io::{self, Write};

use super::table::{Cell, Column};
use crate::book::Decimal;

/// Writes rows as CSV.
#[derive(Debug)]
pub struct CsvWriter<W: Write> {
    out: csv::Writer<W>,
    columns: usize,
    /// The row being written: filled field by field, then written in one call (the `csv`
    /// crate's fast path for a whole record).
    record: csv::ByteRecord,
    /// Scratch space for a decimal's text.
    text: Vec<u8>,
}

/// `d`'s text, exactly as its `Display` writes it (every digit of its scale, `0.00005100`), into
/// `out`: without the formatting machinery and its allocation, which cost more than the rest of
/// a row.
fn decimal_text(d: Decimal, out: &mut Vec<u8>) {
    out.clear();
    let mut ints = itoa::Buffer::new();
    let digits = ints.format(d.mantissa()).as_bytes();
    let scale = usize::from(d.scale());
    if scale == 0 {
        out.extend_from_slice(digits);
    } else if digits.len() <= scale {
        out.extend_from_slice(b"0.");
        out.resize(2 + scale - digits.len(), b'0');
        out.extend_from_slice(digits);
    } else {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.extend_from_slice(int);
        out.push(b'.');
        out.extend_from_slice(frac);
    }
}

/// The I/O error under a `csv` error (the others cannot happen when writing text fields).
fn io_error(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// The `csv` crate's buffer: large enough that a row is rarely split between two writes.
const BUFFER: usize = 1 << 16;

impl<W: Write> CsvWriter<W> {
    /// A writer that has written the header line for `columns`.
    pub fn new(out: W, columns: &[Column]) -> io::Result<CsvWriter<W>> {
        let mut out = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .quote_style(csv::QuoteStyle::Necessary)
            .buffer_capacity(BUFFER)
            .from_writer(out);
        out.write_record(columns.iter().map(|c| c.name.as_bytes()))
            .map_err(io_error)?;
        Ok(CsvWriter {
            out,
            columns: columns.len(),
            record: csv::ByteRecord::with_capacity(256, columns.len()),
            text: Vec::with_capacity(64),
        })
    }

    /// Writes one row (as many cells as columns).
    pub fn write_row(&mut self, cells: &[Cell<'_>]) -> io::Result<()> {
        debug_assert_eq!(cells.len(), self.columns);
        let mut ints = itoa::Buffer::new();
        self.record.clear();
        for cell in cells {
            match *cell {
                Cell::Null => self.record.push_field(b""),
                Cell::Text(t) => self.record.push_field(t.as_bytes()),
                Cell::Micros(v) | Cell::Int(v) => {
                    self.record.push_field(ints.format(v).as_bytes());
                }
                Cell::Bool(b) => self.record.push_field(if b { b"true" } else { b"false" }),
                Cell::Decimal(d) => {
                    decimal_text(d, &mut self.text);
                    self.record.push_field(&self.text);
                }
            }
        }
        self.out.write_byte_record(&self.record).map_err(io_error)
    }

    /// Flushes and returns the output.
    pub fn finish(self) -> io::Result<W> {
        self.out
            .into_inner()
            .map_err(csv::IntoInnerError::into_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::table::ColumnKind;

    fn dec(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn read(bytes: &[u8]) -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes)
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn rows_round_trip_through_a_csv_reader_with_every_digit_kept() {
        let columns = vec![
            Column::required("exchange", ColumnKind::Text),
            Column::required("timestamp", ColumnKind::Micros),
            Column::required("is_snapshot", ColumnKind::Bool),
            Column::required("price", ColumnKind::Decimal),
            Column::nullable("raw", ColumnKind::Text),
        ];
        let rows: Vec<Vec<Cell>> = vec![
            // Scale kept: trailing zeros are part of the text.
            vec![
                Cell::Text("kraken"),
                Cell::Micros(1_763_977_200_123_456),
                Cell::Bool(true),
                Cell::Decimal(dec("0.00005100")),
                Cell::Null,
            ],
            // JSON with commas and quotes, a line break inside a field.
            vec![
                Cell::Text("kraken"),
                Cell::Micros(-1),
                Cell::Bool(false),
                Cell::Decimal(dec("62802.5")),
                Cell::Text("{\"a\":[1,2],\n\"b\":\"x\"}"),
            ],
            vec![
                Cell::Text("kraken"),
                Cell::Micros(0),
                Cell::Bool(false),
                Cell::Decimal(dec("0.10")),
                Cell::Text("a\rb"),
            ],
        ];
        let mut w = CsvWriter::new(Vec::new(), &columns).unwrap();
        for r in &rows {
            w.write_row(r).unwrap();
        }
        let bytes = w.finish().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("exchange,timestamp,is_snapshot,price,raw\n"));
        assert!(
            text.contains("kraken,1763977200123456,true,0.00005100,\n"),
            "{text}"
        );
        assert!(
            text.contains(",\"{\"\"a\"\":[1,2],\n\"\"b\"\":\"\"x\"\"}\"\n"),
            "{text}"
        );
        // A carriage return is a line break to most readers: quoted too.
        assert!(text.ends_with("kraken,0,false,0.10,\"a\rb\"\n"), "{text}");

        let got = read(&bytes);
        assert_eq!(
            got[0],
            ["exchange", "timestamp", "is_snapshot", "price", "raw"]
        );
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[1],
            ["kraken", "1763977200123456", "true", "0.00005100", ""]
        );
        assert_eq!(got[2][4], "{\"a\":[1,2],\n\"b\":\"x\"}");
        assert_eq!(got[2][1], "-1");
        assert_eq!(got[3][4], "a\rb");
    }

    #[test]
    fn decimals_are_written_as_their_display_text() {
        let mut out = Vec::new();
        for text in [
            "0",
            "3",
            "62802.5",
            "0.00005100",
            "0.1",
            "1.0",
            "100.00",
            "0.00000001",
            "12345678901234567890.123456789012345678",
            "99999999999999999999999999999999999999",
            "0.0",
        ] {
            let d = dec(text);
            decimal_text(d, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), d.to_string(), "{text}");
            assert_eq!(d.to_string(), text, "{text}");
        }
    }

    /// A writer whose disk fills after a few bytes.
    #[derive(Debug)]
    struct Full(usize);

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_is_an_io_error_that_names_it() {
        let columns = vec![Column::required("price", ColumnKind::Decimal)];
        let mut w = CsvWriter::new(Full(10), &columns).unwrap();
        let mut failed = None;
        for _ in 0..100_000 {
            if let Err(e) = w.write_row(&[Cell::Decimal(dec("62802.5"))]) {
                failed = Some(e);
                break;
            }
        }
        let e = match failed {
            Some(e) => e,
            None => w.finish().unwrap_err(),
        };
        assert_eq!(e.raw_os_error(), Some(28), "{e}");
    }
}

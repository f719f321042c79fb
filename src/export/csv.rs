//! CSV as tardis.dev writes it: a header line, `,` between fields, `\n` after each row, `.` as the
//! decimal mark, times as integer microseconds since the epoch (UTC), booleans as `true`/`false`.
//!
//! The quoting rules (RFC 4180's): a field that holds `,`, `"`, `\r` or `\n` is written between
//! double quotes, with each `"` inside doubled; an empty text is written as `""`; a missing value
//! (null) is an empty field. Decimals are written as their exact text, scale kept (`0.00005100`),
//! never through a float. [`CsvReader`] reads exactly these rules back (the round-trip tests use
//! it).

use std::io::{self, BufRead, Write};

use super::table::{Cell, Column};

/// Writes rows as CSV.
#[derive(Debug)]
pub struct CsvWriter<W: Write> {
    out: W,
    columns: usize,
    line: Vec<u8>,
}

impl<W: Write> CsvWriter<W> {
    /// A writer that has written the header line for `columns`.
    pub fn new(mut out: W, columns: &[Column]) -> io::Result<CsvWriter<W>> {
        let mut line = Vec::with_capacity(256);
        for (i, c) in columns.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            push_text(&mut line, &c.name);
        }
        line.push(b'\n');
        out.write_all(&line)?;
        Ok(CsvWriter {
            out,
            columns: columns.len(),
            line,
        })
    }

    /// Writes one row (as many cells as columns).
    pub fn write_row(&mut self, cells: &[Cell<'_>]) -> io::Result<()> {
        debug_assert_eq!(cells.len(), self.columns);
        self.line.clear();
        let mut ints = itoa::Buffer::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                self.line.push(b',');
            }
            match *cell {
                Cell::Null => {}
                Cell::Text(t) => push_text(&mut self.line, t),
                Cell::Micros(v) | Cell::Int(v) => {
                    self.line.extend_from_slice(ints.format(v).as_bytes());
                }
                Cell::Bool(b) => {
                    self.line
                        .extend_from_slice(if b { b"true" } else { b"false" });
                }
                Cell::Decimal(d) => write!(self.line, "{d}")?,
            }
        }
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

fn push_text(line: &mut Vec<u8>, text: &str) {
    if text.is_empty() {
        line.extend_from_slice(b"\"\"");
    } else if text
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        line.push(b'"');
        for b in text.bytes() {
            if b == b'"' {
                line.push(b'"');
            }
            line.push(b);
        }
        line.push(b'"');
    } else {
        line.extend_from_slice(text.as_bytes());
    }
}

/// Reads CSV written by [`CsvWriter`] (any RFC 4180 CSV): one record of fields at a time.
#[derive(Debug)]
pub struct CsvReader<R: BufRead> {
    input: R,
    line: String,
    /// Lines read so far (for error messages).
    line_no: u64,
}

impl<R: BufRead> CsvReader<R> {
    /// A reader of `input`.
    pub fn new(input: R) -> CsvReader<R> {
        CsvReader {
            input,
            line: String::new(),
            line_no: 0,
        }
    }

    /// The next record's fields (`None` at the end). A missing value reads as an empty field.
    pub fn next_record(&mut self) -> io::Result<Option<Vec<String>>> {
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut started = false;
        loop {
            self.line.clear();
            if self.input.read_line(&mut self.line)? == 0 {
                if quoted {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("line {}: a quoted field is not closed", self.line_no),
                    ));
                }
                if !started {
                    return Ok(None);
                }
                fields.push(field);
                return Ok(Some(fields));
            }
            self.line_no += 1;
            started = true;
            let mut chars = self.line.chars().peekable();
            while let Some(c) = chars.next() {
                if quoted {
                    if c == '"' {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            field.push('"');
                        } else {
                            quoted = false;
                        }
                    } else {
                        field.push(c);
                    }
                    continue;
                }
                match c {
                    '"' if field.is_empty() => quoted = true,
                    ',' => fields.push(std::mem::take(&mut field)),
                    '\n' => {
                        fields.push(field);
                        return Ok(Some(fields));
                    }
                    '\r' if chars.peek() == Some(&'\n') => {}
                    c => field.push(c),
                }
            }
            if !quoted {
                // The last line, without a line break.
                fields.push(field);
                return Ok(Some(fields));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Decimal;
    use crate::export::table::ColumnKind;

    fn dec(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn rows_round_trip_through_the_reader() {
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
            // An empty text is not a null.
            vec![
                Cell::Text(""),
                Cell::Micros(0),
                Cell::Bool(false),
                Cell::Decimal(dec("0")),
                Cell::Text(""),
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
        assert!(text.ends_with("\"\",0,false,0,\"\"\n"), "{text}");

        let mut r = CsvReader::new(bytes.as_slice());
        let header = r.next_record().unwrap().unwrap();
        assert_eq!(
            header,
            ["exchange", "timestamp", "is_snapshot", "price", "raw"]
        );
        let got: Vec<Vec<String>> = std::iter::from_fn(|| r.next_record().unwrap()).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            ["kraken", "1763977200123456", "true", "0.00005100", ""]
        );
        assert_eq!(got[1][4], "{\"a\":[1,2],\n\"b\":\"x\"}");
        assert_eq!(got[1][1], "-1");
        assert_eq!(got[2], ["", "0", "false", "0", ""]);
    }

    #[test]
    fn the_reader_takes_crlf_and_a_missing_final_line_break() {
        let mut r = CsvReader::new("a,b\r\n1,\"x,y\"".as_bytes());
        assert_eq!(r.next_record().unwrap().unwrap(), ["a", "b"]);
        assert_eq!(r.next_record().unwrap().unwrap(), ["1", "x,y"]);
        assert_eq!(r.next_record().unwrap(), None);
    }

    #[test]
    fn an_unclosed_quote_is_an_error() {
        let mut r = CsvReader::new("a,\"b\n".as_bytes());
        assert!(r.next_record().is_err());
    }
}

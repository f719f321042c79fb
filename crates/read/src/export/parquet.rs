//! Parquet files, with the `parquet` crate's low-level column writers (no Arrow: it would add
//! minutes of compile time for nothing an export needs).
//!
//! Column types:
//! - text: `BYTE_ARRAY` annotated `STRING`;
//! - times: `INT64` annotated `TIMESTAMP(MICROS, UTC)`: the value is tardis's integer microseconds,
//!   and pandas, polars, DuckDB and Spark read it as a UTC timestamp;
//! - integers: `INT64`; booleans: `BOOLEAN`;
//! - prices and quantities: `FIXED_LEN_BYTE_ARRAY(16)` annotated `DECIMAL(38, S)`, the mantissa
//!   at scale `S` as a big-endian two's-complement integer.
//!
//! Why DECIMAL and not text or floats: a DECIMAL is exact, like the `numeric` it comes from, and
//! every Parquet reader knows it as a number (pyarrow `decimal128`, pandas `decimal.Decimal`,
//! polars and DuckDB `DECIMAL`): sorting, comparing and summing work without parsing text, and no
//! value passes through binary floating point. Its cost is that a column has one scale: `S` is the
//! largest scale of any value of the column in the range, found before the first row is written
//! (the export asks the database for `max(scale(price))` over the range, one extra pass over its
//! index), so every value is stored exactly; a value that would not fit (more than 38 digits at
//! `S`) is refused with an error naming it, never rounded. Values print back at scale `S`
//! (`0.5` in a column of scale 8 reads back as `0.50000000`): the same number, written with the
//! column's precision. CSV keeps each value's own text.
//!
//! Pages are compressed with zstd (level 3), which every reader above supports. Rows are buffered
//! per row group ([`ROW_GROUP_ROWS`]), so memory stays bounded whatever the range.

use std::io::Write;
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, TimeUnit, Type as Physical, ZstdLevel};
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, FixedLenByteArray, FixedLenByteArrayType, Int64Type,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use parquet::schema::types::Type;

use super::table::{Cell, Column, ColumnKind, Scales};
use crate::book::Decimal;
use crate::num::pow10;

/// Rows per row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The precision of every DECIMAL column: the most a 16-byte mantissa holds.
pub const DECIMAL_PRECISION: u8 = 38;

/// Why a Parquet file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ParquetFileError {
    /// The parquet crate failed (I/O included).
    #[error(transparent)]
    Parquet(#[from] ParquetError),
    /// A value does not fit its column's DECIMAL type.
    #[error("{value} does not fit column {column} (DECIMAL({DECIMAL_PRECISION}, {scale})) exactly")]
    Decimal {
        /// The column.
        column: String,
        /// The value.
        value: Decimal,
        /// The column's scale.
        scale: u8,
    },
    /// A file that is not what this module writes.
    #[error("unexpected value in column {column}: {found}")]
    Unexpected {
        /// The column.
        column: String,
        /// What was found.
        found: String,
    },
}

/// Writes rows to a Parquet file.
pub struct ParquetWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    columns: Vec<Column>,
    scales: Vec<u8>,
    bufs: Vec<ColumnBuf>,
    rows: usize,
    /// Interned texts (exchange, symbols, sides): a clone is a reference count, not a copy.
    interned: Vec<ByteArray>,
}

impl<W: Write + Send> std::fmt::Debug for ParquetWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetWriter")
            .field("columns", &self.columns)
            .field("scales", &self.scales)
            .field("buffered_rows", &self.rows)
            .finish()
    }
}

struct ColumnBuf {
    defs: Vec<i16>,
    values: Values,
}

enum Values {
    Bytes(Vec<ByteArray>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
    Fixed(Vec<FixedLenByteArray>),
}

fn field_type(column: &Column, scale: u8) -> Result<Type, ParquetError> {
    let (physical, logical) = match column.kind {
        ColumnKind::Text => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
        ColumnKind::Micros => (
            Physical::INT64,
            Some(LogicalType::timestamp(true, TimeUnit::MICROS)),
        ),
        ColumnKind::Int => (Physical::INT64, None),
        ColumnKind::Bool => (Physical::BOOLEAN, None),
        ColumnKind::Decimal => (
            Physical::FIXED_LEN_BYTE_ARRAY,
            Some(LogicalType::decimal(
                i32::from(scale),
                i32::from(DECIMAL_PRECISION),
            )),
        ),
    };
    let mut b = Type::primitive_type_builder(&column.name, physical)
        .with_repetition(if column.nullable {
            Repetition::OPTIONAL
        } else {
            Repetition::REQUIRED
        })
        .with_logical_type(logical);
    if column.kind == ColumnKind::Decimal {
        b = b
            .with_length(16)
            .with_precision(i32::from(DECIMAL_PRECISION))
            .with_scale(i32::from(scale));
    }
    b.build()
}

impl<W: Write + Send> ParquetWriter<W> {
    /// A writer of `columns`, decimal column `i` at scale `scales.get(i)`; `metadata` goes to the
    /// file's key-value metadata.
    pub fn new(
        out: W,
        columns: &[Column],
        scales: &Scales,
        metadata: Vec<(String, String)>,
    ) -> Result<ParquetWriter<W>, ParquetFileError> {
        let scales: Vec<u8> = (0..columns.len()).map(|i| scales.get(i)).collect();
        for &s in &scales {
            if s > DECIMAL_PRECISION {
                return Err(ParquetError::General(format!(
                    "a DECIMAL scale of {s} exceeds the precision {DECIMAL_PRECISION}"
                ))
                .into());
            }
        }
        let fields = columns
            .iter()
            .zip(&scales)
            .map(|(c, &s)| field_type(c, s).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let schema = Type::group_type_builder("schema")
            .with_fields(fields)
            .build()?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_created_by(format!("krakenbook {}", env!("CARGO_PKG_VERSION")))
            .set_key_value_metadata(Some(
                metadata
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect(),
            ))
            .build();
        let writer = SerializedFileWriter::new(out, Arc::new(schema), Arc::new(props))?;
        let bufs = columns
            .iter()
            .map(|c| ColumnBuf {
                defs: Vec::new(),
                values: match c.kind {
                    ColumnKind::Text => Values::Bytes(Vec::new()),
                    ColumnKind::Micros | ColumnKind::Int => Values::Int(Vec::new()),
                    ColumnKind::Bool => Values::Bool(Vec::new()),
                    ColumnKind::Decimal => Values::Fixed(Vec::new()),
                },
            })
            .collect();
        Ok(ParquetWriter {
            writer,
            columns: columns.to_vec(),
            scales,
            bufs,
            rows: 0,
            interned: Vec::new(),
        })
    }

    fn text(&mut self, t: &str) -> ByteArray {
        // Short repeated texts (exchange, symbol, side, channel) are shared.
        if t.len() <= 24 {
            if let Some(b) = self.interned.iter().find(|b| b.data() == t.as_bytes()) {
                return b.clone();
            }
            if self.interned.len() < 64 {
                let b = ByteArray::from(t.as_bytes().to_vec());
                self.interned.push(b.clone());
                return b;
            }
        }
        ByteArray::from(t.as_bytes().to_vec())
    }

    /// Buffers one row (as many cells as columns); writes a row group when enough are buffered.
    pub fn write_row(&mut self, cells: &[Cell<'_>]) -> Result<(), ParquetFileError> {
        debug_assert_eq!(cells.len(), self.columns.len());
        for (i, cell) in cells.iter().enumerate() {
            let present = !matches!(cell, Cell::Null);
            if self.columns[i].nullable {
                self.bufs[i].defs.push(i16::from(present));
            } else if !present {
                return Err(ParquetFileError::Unexpected {
                    column: self.columns[i].name.clone(),
                    found: "no value in a required column".into(),
                });
            }
            let value = match *cell {
                Cell::Null => continue,
                Cell::Text(t) => Pending::Bytes(self.text(t)),
                Cell::Micros(v) | Cell::Int(v) => Pending::Int(v),
                Cell::Bool(b) => Pending::Bool(b),
                Cell::Decimal(d) => Pending::Fixed(self.fixed(i, d)?),
            };
            match (&mut self.bufs[i].values, value) {
                (Values::Bytes(v), Pending::Bytes(b)) => v.push(b),
                (Values::Int(v), Pending::Int(x)) => v.push(x),
                (Values::Bool(v), Pending::Bool(x)) => v.push(x),
                (Values::Fixed(v), Pending::Fixed(x)) => v.push(x),
                _ => {
                    return Err(ParquetFileError::Unexpected {
                        column: self.columns[i].name.clone(),
                        found: format!("{cell:?}"),
                    });
                }
            }
        }
        self.rows += 1;
        if self.rows >= ROW_GROUP_ROWS {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn fixed(&self, column: usize, d: Decimal) -> Result<FixedLenByteArray, ParquetFileError> {
        let scale = self.scales[column];
        let limit = pow10(DECIMAL_PRECISION).unwrap_or(u128::MAX);
        let m = d.mantissa_at(scale).filter(|&m| m < limit).ok_or_else(|| {
            ParquetFileError::Decimal {
                column: self.columns[column].name.clone(),
                value: d,
                scale,
            }
        })?;
        // m < 10^38 < 2^127: a non-negative i128.
        let bytes = (m as i128).to_be_bytes();
        Ok(FixedLenByteArray::from(bytes.to_vec()))
    }

    fn flush_row_group(&mut self) -> Result<(), ParquetFileError> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        for buf in &mut self.bufs {
            let Some(mut col) = group.next_column()? else {
                return Err(ParquetError::General("fewer columns than the schema".into()).into());
            };
            let defs = (!buf.defs.is_empty()).then_some(buf.defs.as_slice());
            match &mut buf.values {
                Values::Bytes(v) => {
                    col.typed::<ByteArrayType>().write_batch(v, defs, None)?;
                    v.clear();
                }
                Values::Int(v) => {
                    col.typed::<Int64Type>().write_batch(v, defs, None)?;
                    v.clear();
                }
                Values::Bool(v) => {
                    col.typed::<BoolType>().write_batch(v, defs, None)?;
                    v.clear();
                }
                Values::Fixed(v) => {
                    col.typed::<FixedLenByteArrayType>()
                        .write_batch(v, defs, None)?;
                    v.clear();
                }
            }
            buf.defs.clear();
            col.close()?;
        }
        group.close()?;
        self.rows = 0;
        Ok(())
    }

    /// Writes the last row group and the footer; returns the output.
    pub fn finish(mut self) -> Result<W, ParquetFileError> {
        self.flush_row_group()?;
        // Writes the footer, flushes, and hands the output back.
        Ok(self.writer.into_inner()?)
    }
}

enum Pending {
    Bytes(ByteArray),
    Int(i64),
    Bool(bool),
    Fixed(FixedLenByteArray),
}

/// A value read back from a Parquet file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Missing.
    Null,
    /// Text.
    Text(String),
    /// Microseconds since the epoch.
    Micros(i64),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A decimal, at its column's scale.
    Decimal(Decimal),
}

impl Value {
    /// The value as [`super::csv::CsvWriter`] writes it (decimals at the column's scale).
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Text(t) => t.clone(),
            Value::Micros(v) | Value::Int(v) => v.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Decimal(d) => d.to_string(),
        }
    }
}

/// Reads a whole Parquet file written by [`ParquetWriter`]: the column names and every row.
pub fn read_file(file: std::fs::File) -> Result<(Vec<String>, Vec<Vec<Value>>), ParquetFileError> {
    let reader = SerializedFileReader::new(file)?;
    let names: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None)? {
        let row = row?;
        let mut out = Vec::with_capacity(names.len());
        for (name, field) in row.get_column_iter() {
            out.push(match field {
                Field::Null => Value::Null,
                Field::Str(s) => Value::Text(s.clone()),
                Field::TimestampMicros(v) => Value::Micros(*v),
                Field::Long(v) => Value::Int(*v),
                Field::Bool(b) => Value::Bool(*b),
                Field::Decimal(d) => Value::Decimal(decimal_of(name, d)?),
                other => {
                    return Err(ParquetFileError::Unexpected {
                        column: name.clone(),
                        found: format!("{other:?}"),
                    });
                }
            });
        }
        rows.push(out);
    }
    Ok((names, rows))
}

fn decimal_of(column: &str, d: &parquet::data_type::Decimal) -> Result<Decimal, ParquetFileError> {
    let bad = || ParquetFileError::Unexpected {
        column: column.to_owned(),
        found: format!("{d:?}"),
    };
    let bytes = d.data();
    if bytes.is_empty() || bytes.len() > 16 {
        return Err(bad());
    }
    // Sign-extend the big-endian two's complement to 16 bytes.
    let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    let m = i128::from_be_bytes(buf);
    let m = u128::try_from(m).map_err(|_| bad())?;
    let scale = u8::try_from(d.scale()).map_err(|_| bad())?;
    Decimal::new(m, scale).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn rows_round_trip_with_exact_decimals_nulls_and_several_row_groups() {
        let columns = vec![
            Column::required("symbol", ColumnKind::Text),
            Column::required("timestamp", ColumnKind::Micros),
            Column::required("is_snapshot", ColumnKind::Bool),
            Column::required("price", ColumnKind::Decimal),
            Column::nullable("amount", ColumnKind::Decimal),
            Column::nullable("checksum", ColumnKind::Int),
        ];
        let scales = Scales {
            by_column: vec![0, 0, 0, 1, 8, 0],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let file = std::fs::File::create(&path).unwrap();
        let mut w = ParquetWriter::new(
            file,
            &columns,
            &scales,
            vec![("krakenbook.kind".into(), "test".into())],
        )
        .unwrap();
        let n = ROW_GROUP_ROWS + 10;
        let prices = ["62802.5", "0.1", "99999999999999999999999999999999999.9"];
        let amounts = [Some("0.00005100"), None, Some("12")];
        for i in 0..n {
            let k = i % 3;
            w.write_row(&[
                Cell::Text(if k == 0 { "BTC/USD" } else { "MINA/GBP" }),
                Cell::Micros(1_700_000_000_000_000 + i as i64),
                Cell::Bool(k == 1),
                Cell::Decimal(dec(prices[k])),
                amounts[k].map_or(Cell::Null, |a| Cell::Decimal(dec(a))),
                if k == 2 {
                    Cell::Null
                } else {
                    Cell::Int(i as i64)
                },
            ])
            .unwrap();
        }
        w.finish().unwrap();

        let (names, rows) = read_file(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(
            names,
            [
                "symbol",
                "timestamp",
                "is_snapshot",
                "price",
                "amount",
                "checksum"
            ]
        );
        assert_eq!(rows.len(), n);
        for (i, row) in rows.iter().enumerate() {
            let k = i % 3;
            assert_eq!(row[1], Value::Micros(1_700_000_000_000_000 + i as i64));
            assert_eq!(row[2], Value::Bool(k == 1));
            // Same value, and the text at the column's scale.
            let Value::Decimal(p) = row[3] else {
                panic!("{row:?}")
            };
            assert_eq!(p, dec(prices[k]));
            assert_eq!(p.scale(), 1);
            match amounts[k] {
                Some(a) => {
                    assert_eq!(row[4], Value::Decimal(dec(a)));
                    assert_eq!(row[4].to_text(), dec(a).with_scale(8).unwrap().to_string());
                }
                None => assert_eq!(row[4], Value::Null),
            }
        }
        assert_eq!(rows[0][4].to_text(), "0.00005100");
        assert_eq!(rows[2][4].to_text(), "12.00000000");
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 2);
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap();
        assert!(kv.iter().any(|k| k.key == "krakenbook.kind"));
    }

    #[test]
    fn a_value_with_more_decimals_than_its_column_is_refused() {
        let columns = vec![Column::required("price", ColumnKind::Decimal)];
        let scales = Scales { by_column: vec![1] };
        let mut w = ParquetWriter::new(Vec::new(), &columns, &scales, Vec::new()).unwrap();
        w.write_row(&[Cell::Decimal(dec("1.50"))]).unwrap();
        let err = w.write_row(&[Cell::Decimal(dec("1.25"))]).unwrap_err();
        assert!(
            err.to_string().contains("1.25 does not fit column price"),
            "{err}"
        );
    }
}

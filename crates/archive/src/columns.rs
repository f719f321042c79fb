//! Parquet files of typed columns, written and read with the `parquet` crate's low-level column
//! writers and readers (no Arrow, as the export does), and a digest of the rows.
//!
//! Column kinds and their Parquet types:
//! - [`Kind::Int64`]: `INT64`; [`Kind::Micros`]: `INT64` annotated `TIMESTAMP(MICROS, UTC)`;
//! - [`Kind::Int32`], [`Kind::Int16`]: `INT32` (annotated `INT(16, signed)` for the latter);
//!   [`Kind::UInt32`]: `INT32` annotated `INT(32, unsigned)`, the value's 32 bits as stored;
//! - booleans ([`Kind::Bool`]): `BOOLEAN`;
//! - [`Kind::Text`]: `BYTE_ARRAY` annotated `STRING`; [`Kind::Json`]: annotated `JSON`;
//!   [`Kind::Bytes`]: plain `BYTE_ARRAY`;
//! - [`Kind::Int64List`]: a 3-level `LIST` of required `INT64` (`list<int64>`), itself optional.
//!
//! Columns marked `delta` (times and seqs, sorted within a file) are written
//! `DELTA_BINARY_PACKED` without a dictionary; the others with a dictionary while it stays
//! small, and every page is compressed with zstd.
//!
//! What must always hold: [`read_table`] gives back exactly the cells [`TableWriter::push`] took,
//! in order, and [`Digest`] of both is the same (so a file is checked against the rows it was
//! written from, cell by cell).

use std::sync::Arc;

use parquet::basic::{
    Compression, Encoding, LogicalType, Repetition, TimeUnit, Type as Physical, ZstdLevel,
};
use parquet::column::reader::ColumnReader;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{ColumnPath, Type};

/// Rows per row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The zstd level of archived pages (written once, read rarely: worth a higher level than the
/// export's 3).
pub const ZSTD_LEVEL: i32 = 9;

/// A column's kind (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `INT64`.
    Int64,
    /// `INT64` microseconds since the epoch, UTC.
    Micros,
    /// `INT32`.
    Int32,
    /// `INT32` holding a 16-bit value.
    Int16,
    /// `INT32` holding 32 unsigned bits.
    UInt32,
    /// `BOOLEAN`.
    Bool,
    /// UTF-8 text.
    Text,
    /// JSON text.
    Json,
    /// Bytes.
    Bytes,
    /// `list<int64>`.
    Int64List,
}

/// A column of a table.
#[derive(Clone, Copy, Debug)]
pub struct Col {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Whether it may be null.
    pub nullable: bool,
    /// Whether it is written delta-encoded (sorted integers).
    pub delta: bool,
}

impl Col {
    /// A required column.
    pub const fn req(name: &'static str, kind: Kind) -> Col {
        Col {
            name,
            kind,
            nullable: false,
            delta: false,
        }
    }

    /// A nullable column.
    pub const fn opt(name: &'static str, kind: Kind) -> Col {
        Col {
            name,
            kind,
            nullable: true,
            delta: false,
        }
    }

    /// A required, delta-encoded column.
    pub const fn delta(name: &'static str, kind: Kind) -> Col {
        Col {
            name,
            kind,
            nullable: false,
            delta: true,
        }
    }
}

/// A cell to write (borrowed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CellRef<'a> {
    /// Null.
    Null,
    /// Any integer kind (and micros).
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Text, JSON or bytes.
    Bytes(&'a [u8]),
    /// A list.
    List(&'a [i64]),
}

/// A cell read back (owned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Null.
    Null,
    /// Any integer kind (and micros).
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Text, JSON or bytes.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<i64>),
}

impl Cell {
    /// As a [`CellRef`].
    pub fn as_ref(&self) -> CellRef<'_> {
        match self {
            Cell::Null => CellRef::Null,
            Cell::Int(v) => CellRef::Int(*v),
            Cell::Bool(b) => CellRef::Bool(*b),
            Cell::Bytes(b) => CellRef::Bytes(b),
            Cell::List(l) => CellRef::List(l),
        }
    }
}

/// An order-dependent 64-bit digest of cells (FNV-1a over a tagged encoding of each): stable
/// across builds, so a digest in the catalog can be checked again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Adds one cell.
    pub fn cell(&mut self, c: CellRef<'_>) {
        match c {
            CellRef::Null => self.bytes(&[0]),
            CellRef::Int(v) => {
                self.bytes(&[1]);
                self.bytes(&v.to_le_bytes());
            }
            CellRef::Bool(b) => self.bytes(&[2, u8::from(b)]),
            CellRef::Bytes(b) => {
                self.bytes(&[3]);
                self.bytes(&(b.len() as u64).to_le_bytes());
                self.bytes(b);
            }
            CellRef::List(l) => {
                self.bytes(&[4]);
                self.bytes(&(l.len() as u64).to_le_bytes());
                for v in l {
                    self.bytes(&v.to_le_bytes());
                }
            }
        }
    }

    /// The digest as text (16 hex digits).
    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Why a table could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The parquet crate failed.
    #[error(transparent)]
    Parquet(#[from] ParquetError),
    /// A cell that does not fit its column.
    #[error("column {column}: {found}")]
    Cell {
        /// The column.
        column: &'static str,
        /// What was found.
        found: String,
    },
    /// A file whose columns are not the table's.
    #[error("the file's columns are {found:?}, expected {expected:?}")]
    Schema {
        /// Expected leaf column names.
        expected: Vec<String>,
        /// Found.
        found: Vec<String>,
    },
}

fn schema(cols: &[Col]) -> Result<Type, ParquetError> {
    let mut fields = Vec::with_capacity(cols.len());
    for c in cols {
        let repetition = if c.nullable {
            Repetition::OPTIONAL
        } else {
            Repetition::REQUIRED
        };
        let field = if c.kind == Kind::Int64List {
            let element = Type::primitive_type_builder("element", Physical::INT64)
                .with_repetition(Repetition::REQUIRED)
                .build()?;
            let list = Type::group_type_builder("list")
                .with_repetition(Repetition::REPEATED)
                .with_fields(vec![Arc::new(element)])
                .build()?;
            Type::group_type_builder(c.name)
                .with_repetition(repetition)
                .with_logical_type(Some(LogicalType::List))
                .with_fields(vec![Arc::new(list)])
                .build()?
        } else {
            let (physical, logical) = match c.kind {
                Kind::Int64 => (Physical::INT64, None),
                Kind::Micros => (
                    Physical::INT64,
                    Some(LogicalType::timestamp(true, TimeUnit::MICROS)),
                ),
                Kind::Int32 => (Physical::INT32, None),
                Kind::Int16 => (Physical::INT32, Some(LogicalType::integer(16, true))),
                Kind::UInt32 => (Physical::INT32, Some(LogicalType::integer(32, false))),
                Kind::Bool => (Physical::BOOLEAN, None),
                Kind::Text => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
                Kind::Json => (Physical::BYTE_ARRAY, Some(LogicalType::Json)),
                Kind::Bytes => (Physical::BYTE_ARRAY, None),
                Kind::Int64List => unreachable!("handled above"),
            };
            Type::primitive_type_builder(c.name, physical)
                .with_repetition(repetition)
                .with_logical_type(logical)
                .build()?
        };
        fields.push(Arc::new(field));
    }
    Type::group_type_builder("schema")
        .with_fields(fields)
        .build()
}

fn leaf_path(c: &Col) -> ColumnPath {
    if c.kind == Kind::Int64List {
        ColumnPath::from(vec![
            c.name.to_owned(),
            "list".to_owned(),
            "element".to_owned(),
        ])
    } else {
        ColumnPath::from(c.name)
    }
}

#[derive(Default)]
struct Buf {
    defs: Vec<i16>,
    reps: Vec<i16>,
    i64s: Vec<i64>,
    i32s: Vec<i32>,
    bools: Vec<bool>,
    bytes: Vec<ByteArray>,
}

/// Writes rows of one table into an in-memory Parquet file.
pub struct TableWriter {
    writer: SerializedFileWriter<Vec<u8>>,
    cols: &'static [Col],
    bufs: Vec<Buf>,
    buffered: usize,
    rows: u64,
    digest: Digest,
}

impl std::fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableWriter")
            .field("rows", &self.rows)
            .field("digest", &self.digest)
            .finish()
    }
}

impl TableWriter {
    /// A writer of `cols`; `metadata` goes to the file's key-value metadata.
    pub fn new(
        cols: &'static [Col],
        metadata: Vec<(String, String)>,
    ) -> Result<TableWriter, TableError> {
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
            .set_created_by(format!("krakenbook {}", env!("CARGO_PKG_VERSION")))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(
                metadata
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect(),
            ));
        for c in cols.iter().filter(|c| c.delta) {
            props = props
                .set_column_dictionary_enabled(leaf_path(c), false)
                .set_column_encoding(leaf_path(c), Encoding::DELTA_BINARY_PACKED);
        }
        let writer = SerializedFileWriter::new(
            Vec::new(),
            Arc::new(schema(cols)?),
            Arc::new(props.build()),
        )?;
        Ok(TableWriter {
            writer,
            cols,
            bufs: cols.iter().map(|_| Buf::default()).collect(),
            buffered: 0,
            rows: 0,
            digest: Digest::default(),
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds one row (a cell per column, in order).
    pub fn push(&mut self, cells: &[CellRef<'_>]) -> Result<(), TableError> {
        if cells.len() != self.cols.len() {
            return Err(TableError::Cell {
                column: self.cols.first().map_or("?", |c| c.name),
                found: format!("{} cells for {} columns", cells.len(), self.cols.len()),
            });
        }
        for (i, (c, cell)) in self.cols.iter().zip(cells).enumerate() {
            let bad = |found: String| TableError::Cell {
                column: c.name,
                found,
            };
            let buf = &mut self.bufs[i];
            if c.kind == Kind::Int64List {
                match *cell {
                    CellRef::Null if c.nullable => {
                        buf.defs.push(0);
                        buf.reps.push(0);
                    }
                    CellRef::List([]) => {
                        buf.defs.push(1);
                        buf.reps.push(0);
                    }
                    CellRef::List(values) => {
                        for (k, v) in values.iter().enumerate() {
                            buf.defs.push(2);
                            buf.reps.push(i16::from(k > 0));
                            buf.i64s.push(*v);
                        }
                    }
                    other => return Err(bad(format!("{other:?} in a list column"))),
                }
                continue;
            }
            if matches!(cell, CellRef::Null) {
                if !c.nullable {
                    return Err(bad("null in a required column".into()));
                }
                buf.defs.push(0);
                continue;
            }
            if c.nullable {
                buf.defs.push(1);
            }
            match (c.kind, *cell) {
                (Kind::Int64 | Kind::Micros, CellRef::Int(v)) => buf.i64s.push(v),
                (Kind::Int32, CellRef::Int(v)) => buf.i32s.push(
                    i32::try_from(v).map_err(|_| bad(format!("{v} is not a 32-bit integer")))?,
                ),
                (Kind::Int16, CellRef::Int(v)) => buf.i32s.push(
                    i16::try_from(v)
                        .map(i32::from)
                        .map_err(|_| bad(format!("{v} is not a 16-bit integer")))?,
                ),
                (Kind::UInt32, CellRef::Int(v)) => buf.i32s.push(
                    u32::try_from(v)
                        .map(|u| u as i32)
                        .map_err(|_| bad(format!("{v} is not 32 unsigned bits")))?,
                ),
                (Kind::Bool, CellRef::Bool(b)) => buf.bools.push(b),
                (Kind::Text | Kind::Json | Kind::Bytes, CellRef::Bytes(b)) => {
                    buf.bytes.push(ByteArray::from(b.to_vec()));
                }
                (kind, other) => return Err(bad(format!("{other:?} in a {kind:?} column"))),
            }
        }
        for cell in cells {
            self.digest.cell(*cell);
        }
        self.rows += 1;
        self.buffered += 1;
        if self.buffered >= ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TableError> {
        if self.buffered == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        for (c, buf) in self.cols.iter().zip(&mut self.bufs) {
            let Some(mut col) = group.next_column()? else {
                return Err(ParquetError::General("fewer columns than the schema".into()).into());
            };
            let defs = (c.nullable || c.kind == Kind::Int64List).then_some(buf.defs.as_slice());
            let reps = (c.kind == Kind::Int64List).then_some(buf.reps.as_slice());
            match c.kind {
                Kind::Int64 | Kind::Micros | Kind::Int64List => {
                    col.typed::<Int64Type>()
                        .write_batch(&buf.i64s, defs, reps)?;
                }
                Kind::Int32 | Kind::Int16 | Kind::UInt32 => {
                    col.typed::<Int32Type>()
                        .write_batch(&buf.i32s, defs, reps)?;
                }
                Kind::Bool => {
                    col.typed::<BoolType>()
                        .write_batch(&buf.bools, defs, reps)?;
                }
                Kind::Text | Kind::Json | Kind::Bytes => {
                    col.typed::<ByteArrayType>()
                        .write_batch(&buf.bytes, defs, reps)?;
                }
            }
            col.close()?;
            *buf = Buf::default();
        }
        group.close()?;
        self.buffered = 0;
        Ok(())
    }

    /// Writes the footer: the file's bytes, its row count and digest.
    pub fn finish(mut self) -> Result<(Vec<u8>, u64, Digest), TableError> {
        self.flush()?;
        let rows = self.rows;
        let digest = self.digest;
        Ok((self.writer.into_inner()?, rows, digest))
    }
}

/// A table read back: its rows (a cell per column) and their digest.
#[derive(Debug, Default)]
pub struct Table {
    /// The rows.
    pub rows: Vec<Vec<Cell>>,
    /// Their digest.
    pub digest: Digest,
    /// The file's key-value metadata.
    pub metadata: Vec<(String, String)>,
}

/// Reads a whole file written by [`TableWriter`] for `cols`.
pub fn read_table(bytes: bytes::Bytes, cols: &'static [Col]) -> Result<Table, TableError> {
    let mut rows = Vec::new();
    let (digest, metadata) = for_each_row(bytes, cols, |row| {
        rows.push(row);
        Ok(())
    })?;
    Ok(Table {
        rows,
        digest,
        metadata,
    })
}

/// Streams the rows of a file written by [`TableWriter`] for `cols` to `each`, one row group in
/// memory at a time; returns their digest and the file's key-value metadata.
pub fn for_each_row(
    bytes: bytes::Bytes,
    cols: &'static [Col],
    mut each: impl FnMut(Vec<Cell>) -> Result<(), TableError>,
) -> Result<(Digest, Vec<(String, String)>), TableError> {
    let reader = SerializedFileReader::new(bytes)?;
    let meta = reader.metadata();
    let found: Vec<String> = meta
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.path().string())
        .collect();
    let expected: Vec<String> = cols.iter().map(|c| leaf_path(c).string()).collect();
    if found != expected {
        return Err(TableError::Schema { expected, found });
    }
    let metadata = meta
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let mut digest = Digest::default();
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g)?;
        let n = usize::try_from(group.metadata().num_rows()).unwrap_or(0);
        let mut rows: Vec<Vec<Cell>> = (0..n).map(|_| Vec::with_capacity(cols.len())).collect();
        for (i, c) in cols.iter().enumerate() {
            let cells = read_column(group.get_column_reader(i)?, c, n)?;
            if cells.len() != n {
                return Err(TableError::Cell {
                    column: c.name,
                    found: format!("{} values for {n} rows", cells.len()),
                });
            }
            for (row, cell) in rows.iter_mut().zip(cells) {
                row.push(cell);
            }
        }
        for row in rows {
            for cell in &row {
                digest.cell(cell.as_ref());
            }
            each(row)?;
        }
    }
    Ok((digest, metadata))
}

/// Every value of a column chunk, with its definition and repetition levels.
fn read_levels<T, F>(
    reader: &mut parquet::column::reader::ColumnReaderImpl<T>,
    list: bool,
    n: usize,
    convert: F,
    c: &Col,
) -> Result<Vec<Cell>, TableError>
where
    T: parquet::data_type::DataType,
    F: Fn(&T::T) -> Result<Cell, TableError>,
{
    let mut defs = Vec::new();
    let mut reps = Vec::new();
    let mut values = Vec::new();
    loop {
        let (records, _, _) = reader.read_records(
            n.max(1),
            (c.nullable || list).then_some(&mut defs),
            list.then_some(&mut reps),
            &mut values,
        )?;
        if records == 0 {
            break;
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut next = values.iter();
    let mut value = || {
        next.next().ok_or_else(|| TableError::Cell {
            column: c.name,
            found: "fewer values than levels".into(),
        })
    };
    if list {
        for (&d, &r) in defs.iter().zip(&reps) {
            if r == 0 {
                out.push(match d {
                    0 => Cell::Null,
                    1 => Cell::List(Vec::new()),
                    _ => Cell::List(Vec::new()),
                });
            }
            if d >= 2 {
                let Some(Cell::List(l)) = out.last_mut() else {
                    return Err(TableError::Cell {
                        column: c.name,
                        found: "a list value before its list".into(),
                    });
                };
                match convert(value()?)? {
                    Cell::Int(v) => l.push(v),
                    other => {
                        return Err(TableError::Cell {
                            column: c.name,
                            found: format!("{other:?} in a list"),
                        });
                    }
                }
            }
        }
    } else if c.nullable {
        for &d in &defs {
            out.push(if d == 0 {
                Cell::Null
            } else {
                convert(value()?)?
            });
        }
    } else {
        for v in &values {
            out.push(convert(v)?);
        }
    }
    Ok(out)
}

fn read_column(reader: ColumnReader, c: &Col, n: usize) -> Result<Vec<Cell>, TableError> {
    let list = c.kind == Kind::Int64List;
    let wrong = |found: &str| TableError::Cell {
        column: c.name,
        found: format!("a {found} column"),
    };
    match (c.kind, reader) {
        (Kind::Int64 | Kind::Micros | Kind::Int64List, ColumnReader::Int64ColumnReader(mut r)) => {
            read_levels(&mut r, list, n, |v| Ok(Cell::Int(*v)), c)
        }
        (Kind::Int32 | Kind::Int16, ColumnReader::Int32ColumnReader(mut r)) => {
            read_levels(&mut r, list, n, |v| Ok(Cell::Int(i64::from(*v))), c)
        }
        (Kind::UInt32, ColumnReader::Int32ColumnReader(mut r)) => {
            read_levels(&mut r, list, n, |v| Ok(Cell::Int(i64::from(*v as u32))), c)
        }
        (Kind::Bool, ColumnReader::BoolColumnReader(mut r)) => {
            read_levels(&mut r, list, n, |v| Ok(Cell::Bool(*v)), c)
        }
        (Kind::Text | Kind::Json | Kind::Bytes, ColumnReader::ByteArrayColumnReader(mut r)) => {
            read_levels(&mut r, list, n, |v| Ok(Cell::Bytes(v.data().to_vec())), c)
        }
        (_, ColumnReader::BoolColumnReader(_)) => Err(wrong("boolean")),
        (_, ColumnReader::Int32ColumnReader(_)) => Err(wrong("INT32")),
        (_, ColumnReader::Int64ColumnReader(_)) => Err(wrong("INT64")),
        (_, ColumnReader::ByteArrayColumnReader(_)) => Err(wrong("BYTE_ARRAY")),
        (_, _) => Err(wrong("other")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static COLS: &[Col] = &[
        Col::delta("t", Kind::Micros),
        Col::req("name", Kind::Text),
        Col::opt("ok", Kind::Bool),
        Col::req("n", Kind::Int16),
        Col::opt("crc", Kind::UInt32),
        Col::opt("levels", Kind::Int64List),
        Col::opt("raw", Kind::Json),
        Col::opt("bytes", Kind::Bytes),
        Col::opt("small", Kind::Int32),
    ];

    fn row(i: i64) -> Vec<Cell> {
        vec![
            Cell::Int(1_700_000_000_000_000 + i),
            Cell::Bytes(if i % 2 == 0 {
                b"BTC/USD".to_vec()
            } else {
                b"x".to_vec()
            }),
            match i % 3 {
                0 => Cell::Null,
                1 => Cell::Bool(true),
                _ => Cell::Bool(false),
            },
            Cell::Int(i % 300 - 150),
            if i % 5 == 0 {
                Cell::Null
            } else {
                Cell::Int(4_294_967_295 - i)
            },
            match i % 4 {
                0 => Cell::Null,
                1 => Cell::List(Vec::new()),
                2 => Cell::List(vec![i * 32 + 2]),
                _ => Cell::List(vec![i, -i, i64::MAX, i64::MIN]),
            },
            if i % 7 == 0 {
                Cell::Bytes(br#"{"a":[1,2]}"#.to_vec())
            } else {
                Cell::Null
            },
            if i % 11 == 0 {
                Cell::Bytes(vec![0, 255, 10])
            } else {
                Cell::Null
            },
            Cell::Int(-(i % 1000)),
        ]
    }

    #[test]
    fn every_kind_round_trips_exactly_over_several_row_groups() {
        let mut w = TableWriter::new(COLS, vec![("k".into(), "v".into())]).unwrap();
        let n = ROW_GROUP_ROWS as i64 + 17;
        let rows: Vec<Vec<Cell>> = (0..n).map(row).collect();
        for r in &rows {
            let refs: Vec<CellRef<'_>> = r.iter().map(Cell::as_ref).collect();
            w.push(&refs).unwrap();
        }
        let (bytes, count, digest) = w.finish().unwrap();
        assert_eq!(count, n as u64);
        let table = read_table(bytes::Bytes::from(bytes), COLS).unwrap();
        assert_eq!(table.rows.len(), rows.len());
        assert!(table.rows == rows, "rows differ");
        assert_eq!(table.digest, digest);
        assert!(table.metadata.contains(&("k".into(), "v".into())));
    }

    #[test]
    fn a_changed_cell_changes_the_digest() {
        let mut a = Digest::default();
        let mut b = Digest::default();
        for (x, y) in [
            (CellRef::List(&[1, 2]), CellRef::List(&[1, 3])),
            (CellRef::Null, CellRef::Null),
        ] {
            a.cell(x);
            b.cell(y);
        }
        assert_ne!(a, b);
        let (mut c, mut d) = (Digest::default(), Digest::default());
        c.cell(CellRef::Bytes(b"ab"));
        c.cell(CellRef::Bytes(b""));
        d.cell(CellRef::Bytes(b"a"));
        d.cell(CellRef::Bytes(b"b"));
        assert_ne!(c, d, "cell boundaries count");
    }

    #[test]
    fn cells_that_do_not_fit_their_column_are_refused() {
        let mut w = TableWriter::new(COLS, Vec::new()).unwrap();
        let mut r = row(1);
        r[3] = Cell::Int(40_000);
        let refs: Vec<CellRef<'_>> = r.iter().map(Cell::as_ref).collect();
        let e = w.push(&refs).unwrap_err().to_string();
        assert!(e.contains("column n") && e.contains("16-bit"), "{e}");
        let mut r = row(1);
        r[1] = Cell::Null;
        let refs: Vec<CellRef<'_>> = r.iter().map(Cell::as_ref).collect();
        assert!(w.push(&refs).is_err());
    }

    #[test]
    fn a_file_of_another_table_is_refused() {
        static OTHER: &[Col] = &[Col::req("t", Kind::Micros)];
        let mut w = TableWriter::new(OTHER, Vec::new()).unwrap();
        w.push(&[CellRef::Int(1)]).unwrap();
        let (bytes, _, _) = w.finish().unwrap();
        let e = read_table(bytes::Bytes::from(bytes), COLS).unwrap_err();
        assert!(matches!(e, TableError::Schema { .. }), "{e}");
    }
}

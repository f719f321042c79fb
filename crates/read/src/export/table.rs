//! The rows an export writes, whatever the file format: named, typed columns and one cell per
//! column per row.
//!
//! What must hold: a [`Cell`] carries the value exactly (a [`Decimal`] with its scale, a time in
//! microseconds); each format writes it without rounding (see [`super::csv`] and
//! [`super::parquet`]).

use crate::book::Decimal;

/// What a column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// UTF-8 text.
    Text,
    /// An instant, in microseconds since the Unix epoch (UTC).
    Micros,
    /// A 64-bit integer.
    Int,
    /// `true` or `false`.
    Bool,
    /// An exact decimal.
    Decimal,
}

/// A named, typed column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Its name (the CSV header, the Parquet field).
    pub name: String,
    /// What it holds.
    pub kind: ColumnKind,
    /// Whether a row may leave it empty.
    pub nullable: bool,
}

impl Column {
    /// A column that every row fills.
    pub fn required(name: impl Into<String>, kind: ColumnKind) -> Column {
        Column {
            name: name.into(),
            kind,
            nullable: false,
        }
    }

    /// A column that a row may leave empty.
    pub fn nullable(name: impl Into<String>, kind: ColumnKind) -> Column {
        Column {
            name: name.into(),
            kind,
            nullable: true,
        }
    }
}

/// One value of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell<'a> {
    /// No value (a nullable column).
    Null,
    /// Text.
    Text(&'a str),
    /// Microseconds since the Unix epoch.
    Micros(i64),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// An exact decimal.
    Decimal(Decimal),
}

/// The largest scale of the decimal values of each decimal column: a Parquet DECIMAL column
/// needs it before the first row is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scales {
    /// Per column (by index); columns that are not decimals are ignored.
    pub by_column: Vec<u8>,
}

impl Scales {
    /// The scale of column `i` (0 when unknown).
    pub fn get(&self, i: usize) -> u8 {
        self.by_column.get(i).copied().unwrap_or(0)
    }
}

//! Exact numbers: the [`Decimal`] every price and quantity is, and the small types built on it
//! that every layer shares ([`Precision`], [`Side`], [`PriceLevel`]).
//!
//! This module is the bottom of the core crate: it uses nothing else of it, so the wire types
//! ([`crate::kraken`]) and the books ([`crate::book`]) both build on it without importing each
//! other's numbers.
//!
//! What must always hold: no `f64` touches a price or a quantity; a value is held exactly (u128
//! mantissa and a scale, 38 digits) or refused with an error.

pub mod decimal;

pub use decimal::{Decimal, DecimalError, pow10};

/// The decimals a pair's prices and quantities are printed with (the instrument channel's
/// `price_precision` and `qty_precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Precision {
    /// Digits after the point in a price.
    pub price: u8,
    /// Digits after the point in a quantity.
    pub qty: u8,
}

/// A side of the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Buy orders, best (highest) first.
    Bid,
    /// Sell orders, best (lowest) first.
    Ask,
}

impl Side {
    /// `"bid"` or `"ask"`, the spelling stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Side::Bid => "bid",
            Side::Ask => "ask",
        }
    }
}

/// One price level: a price and the quantity resting at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PriceLevel {
    /// Price, exact.
    pub price: Decimal,
    /// Quantity, exact.
    pub qty: Decimal,
}

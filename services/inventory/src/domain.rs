//! Inventory's pure rules: where an order's stock stands, how an order's lines become
//! reservations, why an order cannot be served, the demo catalog and how product ids are made.
//! No I/O here, so every rule has a table-driven test.

use std::{collections::BTreeMap, fmt};

use uuid::Uuid;
use weir_contracts::LineItem;

/// Where one order's stock stands. Every order inventory ever heard of has exactly one state,
/// and the state decides what a later (or repeated) message for the order may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderState {
    /// Its lines are held: moved from `available` to `reserved`.
    Reserved,
    /// Nothing is held and nothing will be: the reservation was returned, or a release came
    /// first and left this tombstone so that a late payment reserves nothing.
    Released,
    /// The order completed: its lines moved from `reserved` to `sold`.
    Sold,
    /// The order could not be served; nothing was reserved. Kept so that a repeated payment
    /// for the order gets the same answer instead of a second attempt.
    Unavailable,
}

impl OrderState {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Reserved => "reserved",
            OrderState::Released => "released",
            OrderState::Sold => "sold",
            OrderState::Unavailable => "unavailable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reserved" => OrderState::Reserved,
            "released" => OrderState::Released,
            "sold" => OrderState::Sold,
            "unavailable" => OrderState::Unavailable,
            _ => return None,
        })
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An order's lines as reservations: one per product (repeated products summed), ordered by
/// product id, so the first answer and any repeated answer list them identically.
pub fn merge_lines(items: &[LineItem]) -> Vec<LineItem> {
    let mut merged: BTreeMap<Uuid, u64> = BTreeMap::new();
    for item in items {
        *merged.entry(item.product_id).or_default() += u64::from(item.quantity);
    }
    merged
        .into_iter()
        .map(|(product_id, quantity)| LineItem {
            product_id,
            // Saturating: nobody orders four billion of one thing, and if they do, the stock
            // check refuses it anyway.
            quantity: u32::try_from(quantity).unwrap_or(u32::MAX),
        })
        .collect()
}

/// Why one line cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shortage {
    Unknown { product_id: Uuid },
    Short { sku: String, available: i64 },
}

impl fmt::Display for Shortage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortage::Unknown { product_id } => write!(f, "{product_id}: no such product"),
            Shortage::Short { sku, available } => write!(f, "{sku}: only {available} available"),
        }
    }
}

/// The `StockUnavailable` reason for an order: every line at fault, so the customer learns all
/// of it at once.
pub fn unavailable_reason(shortages: &[Shortage]) -> String {
    shortages.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// One product's stock. Conserved: `initial == available + reserved + sold`, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub initial: i64,
}

impl Stock {
    /// Whether no unit was created or lost.
    pub fn is_conserved(&self) -> bool {
        self.available >= 0
            && self.reserved >= 0
            && self.sold >= 0
            && self.available.checked_add(self.reserved).and_then(|s| s.checked_add(self.sold)) == Some(self.initial)
    }
}

/// The namespace of product ids: a product's id is the UUID v5 of its SKU in it.
const PRODUCT_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_23c4_8d0e_4a5b_9c7d_1e2f_3a4b_5c6d);

/// The id of the product with `sku`: the same on every machine, data dir and restart, so a
/// catalog seeded twice names its products the same way.
pub fn product_id(sku: &str) -> Uuid {
    Uuid::new_v5(&PRODUCT_NAMESPACE, sku.as_bytes())
}

/// Stock of the demo products that should never run out, even under a load benchmark.
pub const PLENTY: i64 = 100_000_000;

/// One product of the demo catalog; prices are EUR minor units.
#[derive(Debug, Clone, Copy)]
pub struct DemoProduct {
    pub sku: &'static str,
    pub name: &'static str,
    pub price_cents: i64,
    pub stock: i64,
}

/// The catalog a fresh embedded install starts with. One product is deliberately scarce so the
/// walkthrough and the tests can see an order cancelled for lack of stock.
pub const DEMO_CATALOG: &[DemoProduct] = &[
    DemoProduct {
        sku: "BOOK-RUST-2E",
        name: "The Rust Programming Language, 2nd ed.",
        price_cents: 3999,
        stock: PLENTY,
    },
    DemoProduct { sku: "KB-MECH-TKL", name: "Mechanical keyboard, tenkeyless", price_cents: 8950, stock: PLENTY },
    DemoProduct { sku: "MOUSE-WL-01", name: "Wireless mouse", price_cents: 2499, stock: PLENTY },
    DemoProduct { sku: "MUG-FERRIS", name: "Ferris coffee mug", price_cents: 1250, stock: PLENTY },
    DemoProduct { sku: "HUB-USBC-7", name: "USB-C hub, 7 ports", price_cents: 4590, stock: PLENTY },
    DemoProduct { sku: "STICKER-PACK", name: "Sticker pack", price_cents: 499, stock: PLENTY },
    DemoProduct { sku: "LAMP-DESK-LE", name: "Desk lamp, limited edition", price_cents: 12900, stock: 3 },
];

/// The SKU of the demo product that has only a few units.
pub const SCARCE_SKU: &str = "LAMP-DESK-LE";

/// Checks a new product's fields; returns what to fix.
pub fn validate_product(sku: &str, name: &str, price_amount: i64, stock: i64) -> Result<(), String> {
    if sku.is_empty() || sku.len() > 64 {
        return Err(format!("a SKU has 1 to 64 characters; got {}", sku.len()));
    }
    if !sku.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        return Err(format!("a SKU uses upper-case letters, digits, '-' and '_'; got {sku:?}"));
    }
    let name_length = name.trim().chars().count();
    if name_length == 0 || name_length > 200 {
        return Err(format!("a product name has 1 to 200 characters; got {name_length}"));
    }
    if price_amount < 0 {
        return Err(format!("a price cannot be negative; got {price_amount}"));
    }
    if stock < 0 {
        return Err(format!("stock cannot be negative; got {stock}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn line(product: u128, quantity: u32) -> LineItem {
        LineItem { product_id: Uuid::from_u128(product), quantity }
    }

    #[test]
    fn order_states_round_trip_and_reject_strangers() {
        for state in [OrderState::Reserved, OrderState::Released, OrderState::Sold, OrderState::Unavailable] {
            assert_eq!(OrderState::parse(state.as_str()), Some(state));
            assert_eq!(state.to_string(), state.as_str());
        }
        for bad in ["", "RESERVED", "pending", "sold "] {
            assert_eq!(OrderState::parse(bad), None, "{bad:?} accepted");
        }
    }

    #[test]
    fn lines_merge_per_product_in_id_order() {
        let cases: &[(&[LineItem], &[LineItem])] = &[
            (&[], &[]),
            (&[line(2, 1)], &[line(2, 1)]),
            (&[line(2, 1), line(1, 4)], &[line(1, 4), line(2, 1)]),
            (&[line(3, 2), line(1, 1), line(3, 5)], &[line(1, 1), line(3, 7)]),
            (&[line(1, u32::MAX), line(1, 1)], &[line(1, u32::MAX)]),
        ];
        for (input, expected) in cases {
            assert_eq!(merge_lines(input), *expected, "merging {input:?}");
        }
    }

    #[test]
    fn reasons_name_every_line_at_fault() {
        let unknown = Uuid::from_u128(7);
        let cases: &[(Vec<Shortage>, String)] = &[
            (vec![Shortage::Short { sku: "LAMP".into(), available: 3 }], "LAMP: only 3 available".into()),
            (vec![Shortage::Unknown { product_id: unknown }], format!("{unknown}: no such product")),
            (
                vec![Shortage::Short { sku: "A".into(), available: 0 }, Shortage::Unknown { product_id: unknown }],
                format!("A: only 0 available; {unknown}: no such product"),
            ),
        ];
        for (shortages, expected) in cases {
            assert_eq!(&unavailable_reason(shortages), expected);
        }
    }

    #[test]
    fn conservation_is_checked_exactly() {
        let stock = |available, reserved, sold, initial| Stock { available, reserved, sold, initial };
        let cases = [
            (stock(3, 0, 0, 3), true),
            (stock(1, 1, 1, 3), true),
            (stock(0, 0, 0, 0), true),
            (stock(2, 0, 0, 3), false),
            (stock(4, 0, 0, 3), false),
            (stock(-1, 4, 0, 3), false),
            (stock(i64::MAX, 1, 0, i64::MIN), false),
        ];
        for (stock, conserved) in cases {
            assert_eq!(stock.is_conserved(), conserved, "{stock:?}");
        }
    }

    #[test]
    fn product_ids_are_deterministic_and_distinct() {
        assert_eq!(product_id("MUG-FERRIS"), product_id("MUG-FERRIS"));
        assert_ne!(product_id("MUG-FERRIS"), product_id("MUG-FERRIs"));
        assert_eq!(product_id("MUG-FERRIS").get_version_num(), 5);
    }

    #[test]
    fn the_demo_catalog_is_valid_and_has_one_scarce_product() {
        assert!((6..=8).contains(&DEMO_CATALOG.len()));
        let skus: HashSet<_> = DEMO_CATALOG.iter().map(|p| p.sku).collect();
        let names: HashSet<_> = DEMO_CATALOG.iter().map(|p| p.name).collect();
        assert_eq!(skus.len(), DEMO_CATALOG.len(), "SKUs are distinct");
        assert_eq!(names.len(), DEMO_CATALOG.len(), "names are distinct");
        for p in DEMO_CATALOG {
            validate_product(p.sku, p.name, p.price_cents, p.stock).unwrap();
            assert!(p.price_cents > 0);
        }
        let scarce: Vec<_> = DEMO_CATALOG.iter().filter(|p| p.stock < 10).collect();
        assert_eq!(scarce.len(), 1);
        assert_eq!(scarce[0].sku, SCARCE_SKU);
        assert!(DEMO_CATALOG.iter().filter(|p| p.sku != SCARCE_SKU).all(|p| p.stock == PLENTY));
    }

    #[test]
    fn new_products_are_validated() {
        let cases = [
            ("MUG-1", "Mug", 100, 5, true),
            ("MUG_1", "Mug", 0, 0, true),
            ("", "Mug", 100, 5, false),
            ("mug-1", "Mug", 100, 5, false),
            ("MUG 1", "Mug", 100, 5, false),
            ("MUG-1", "   ", 100, 5, false),
            ("MUG-1", "Mug", -1, 5, false),
            ("MUG-1", "Mug", 100, -5, false),
        ];
        for (sku, name, price, stock, ok) in cases {
            assert_eq!(validate_product(sku, name, price, stock).is_ok(), ok, "{sku:?} {name:?} {price} {stock}");
        }
        assert!(validate_product(&"A".repeat(65), "Mug", 1, 1).is_err());
    }
}

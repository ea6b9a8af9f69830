//! Invoices: vendor and customer blocks, an invoice number and dates, line items, tax, totals and
//! payment instructions.

use super::common::{Address, Company, Currency, Date, Person, amount, fill_pattern, join_sections, phone};
use super::rng::Rng;

/// (description, lowest and highest unit price in cents, unit) per kind of business.
type Item = (&'static str, i64, i64, &'static str);

const CONSULTING: &[Item] = &[
    ("Consulting services", 9_000, 25_000, "hr"),
    ("Strategy workshop (half day)", 80_000, 250_000, "ea"),
    ("Project management", 7_500, 15_000, "hr"),
    ("Process review and recommendations", 150_000, 600_000, "ea"),
    ("On-site support", 6_000, 14_000, "hr"),
    ("Travel expenses (at cost)", 20_000, 120_000, "ea"),
    ("Quarterly business review", 50_000, 150_000, "ea"),
];
const SOFTWARE: &[Item] = &[
    ("Software development", 8_500, 18_000, "hr"),
    ("Annual subscription - Professional plan", 120_000, 900_000, "ea"),
    ("User licenses", 1_500, 9_000, "user"),
    ("Cloud hosting (monthly)", 20_000, 300_000, "mo"),
    ("Implementation and data migration", 200_000, 900_000, "ea"),
    ("Premium support package", 40_000, 200_000, "ea"),
    ("API usage overage", 5_000, 60_000, "ea"),
    ("Code review and QA testing", 7_000, 14_000, "hr"),
];
const SUPPLIES: &[Item] = &[
    ("Copy paper A4, 80 gsm (box of 5 reams)", 2_400, 4_200, "box"),
    ("Toner cartridge, black", 6_500, 14_000, "ea"),
    ("Ergonomic office chair", 18_000, 45_000, "ea"),
    ("Standing desk frame", 25_000, 60_000, "ea"),
    ("Ballpoint pens (pack of 50)", 900, 2_200, "pk"),
    ("Filing cabinet, 4 drawer", 15_000, 32_000, "ea"),
    ("Whiteboard markers (set of 12)", 1_100, 2_600, "set"),
    ("Monitor 27 inch", 19_000, 42_000, "ea"),
    ("USB-C docking station", 9_000, 22_000, "ea"),
];
const FREIGHT: &[Item] = &[
    ("Pallet transport, full truckload", 90_000, 320_000, "ea"),
    ("Less-than-truckload shipment", 18_000, 75_000, "ea"),
    ("Warehouse storage (per pallet, monthly)", 1_800, 4_500, "plt"),
    ("Fuel surcharge", 3_000, 25_000, "ea"),
    ("Customs clearance fee", 9_500, 30_000, "ea"),
    ("Liftgate delivery", 7_500, 15_000, "ea"),
    ("Pick and pack handling", 150, 600, "unit"),
];
const TRADES: &[Item] = &[
    ("Labor - electrician", 6_500, 12_000, "hr"),
    ("Labor - plumber", 7_000, 13_000, "hr"),
    ("HVAC maintenance visit", 15_000, 45_000, "ea"),
    ("Replacement parts", 2_000, 40_000, "ea"),
    ("Emergency call-out fee", 9_000, 25_000, "ea"),
    ("Materials and disposal", 5_000, 60_000, "ea"),
    ("Annual fire safety inspection", 25_000, 80_000, "ea"),
];
const MARKETING: &[Item] = &[
    ("Brand identity design", 150_000, 600_000, "ea"),
    ("Social media campaign management", 80_000, 300_000, "mo"),
    ("Copywriting", 6_000, 12_000, "hr"),
    ("Photography session", 60_000, 200_000, "ea"),
    ("Printed brochures (1,000 units)", 40_000, 120_000, "ea"),
    ("Search advertising spend (pass-through)", 100_000, 900_000, "ea"),
    ("Website redesign - phase 1", 300_000, 1_200_000, "ea"),
];

/// What each kind of vendor sells, and the words its name is made of.
const CATALOGUES: &[(&[Item], &[&str])] = &[
    (CONSULTING, &["Consulting", "Advisory", "Partners", "Management Consultants"]),
    (SOFTWARE, &["Software", "Systems", "Labs", "Cloud Services", "Digital"]),
    (SUPPLIES, &["Office Supply", "Supplies", "Office Solutions", "Wholesale"]),
    (FREIGHT, &["Logistics", "Freight", "Transport", "Shipping"]),
    (TRADES, &["Facilities", "Electric", "Mechanical Services", "Building Services", "Plumbing & Heating"]),
    (MARKETING, &["Marketing", "Media", "Creative", "Design Studio"]),
];

pub(crate) fn generate(rng: &mut Rng) -> String {
    let (catalogue, trades) = rng.pick(CATALOGUES);
    let trade = rng.pick(trades);
    let vendor = Company::in_trade(rng, trade);
    let vendor_address = Address::random(rng);
    let client = Company::random(rng);
    let client_address = Address::random(rng);
    let contact = Person::random(rng);
    let sender = Person::random(rng);
    let currency = Currency::random(rng);
    let style = rng.below(6);
    let issued = Date::random(rng);
    let terms_days = rng.pick(&[7, 10, 14, 15, 30, 30, 30, 45, 60]);
    let due = issued.plus_days(terms_days);
    let number = match rng.below(5) {
        0 => format!("INV-{}-{:05}", issued.year, rng.range(1, 99_999)),
        1 => format!("{}", rng.range(1_000, 999_999)),
        2 => format!("{}/{:04}", issued.year, rng.range(1, 9_999)),
        3 => fill_pattern(rng, "@@-######"),
        _ => format!("INV{:06}", rng.range(1, 999_999)),
    };

    let title = rng.pick(&["INVOICE", "Invoice", "TAX INVOICE", "Tax Invoice", "COMMERCIAL INVOICE", "Sales Invoice"]);
    let mut vendor_block = vec![vendor.name.clone()];
    vendor_block.extend(vendor_address.lines());
    if rng.chance(0.7) {
        vendor_block.push(format!("Phone: {}", phone(rng)));
    }
    if rng.chance(0.6) {
        vendor_block.push(format!("{}@{}", rng.pick(&["billing", "accounts", "invoices", "finance"]), vendor.domain));
    }
    if rng.chance(0.4) {
        vendor_block.push(format!("www.{}", vendor.domain));
    }
    if rng.chance(0.5) {
        let id = match rng.below(3) {
            0 => format!("VAT Reg. No.: {}", fill_pattern(rng, "@@#########")),
            1 => format!("Tax ID: {}", fill_pattern(rng, "##-#######")),
            _ => format!("Company No. {}", fill_pattern(rng, "########")),
        };
        vendor_block.push(id);
    }

    let number_label = rng.pick(&["Invoice No.", "Invoice Number", "Invoice #", "Invoice no:", "Number"]);
    let mut details = vec![
        format!("{number_label} {number}"),
        format!("{} {}", rng.pick(&["Invoice Date:", "Date:", "Date of issue:", "Issued:"]), issued.format(style)),
    ];
    if rng.chance(0.85) {
        details.push(format!("{} {}", rng.pick(&["Due Date:", "Payment Due:", "Due:"]), due.format(style)));
    }
    if rng.chance(0.45) {
        details.push(format!("PO Number: {}", fill_pattern(rng, "PO-#####")));
    }
    if rng.chance(0.35) {
        details.push(format!("Customer ID: {}", fill_pattern(rng, "C####")));
    }
    if rng.chance(0.3) {
        details.push(format!("Service period: {} to {}", issued.month_year(), due.month_year()));
    }

    let mut bill_to = vec![rng.pick(&["Bill To:", "Billed To:", "Invoice To:", "Customer:", "Sold To:"]).to_string()];
    bill_to.push(client.name.clone());
    if rng.chance(0.6) {
        bill_to.push(format!("Attn: {}", contact.full()));
    }
    bill_to.extend(client_address.lines());
    let ship_to = rng.chance(0.25).then(|| {
        let address = Address::random(rng);
        let mut block = vec!["Ship To:".to_string(), client.short()];
        block.extend(address.lines());
        block.join("\n")
    });

    // Line items.
    let count = rng.range(2, 7) as usize;
    let mut items = Vec::new();
    let mut subtotal = 0;
    let layout = rng.below(3);
    for (index, &(description, low, high, unit)) in rng.sample(catalogue, count).iter().enumerate() {
        let quantity = match unit {
            "hr" => rng.range(2, 80),
            "unit" => rng.range(50, 2_000),
            "user" => rng.range(5, 250),
            _ if high > 100_000 => 1,
            _ => rng.range(1, 24),
        };
        let price = rng.range(low / 100, high / 100) * 100 + rng.pick(&[0, 0, 50, 95, 99]);
        let line = quantity * price;
        subtotal += line;
        items.push(match layout {
            0 => format!("{description}    {quantity} {unit}    {}    {}", amount(price), amount(line)),
            1 => {
                format!("{}. {description} - {quantity} x {} = {}", index + 1, currency.fmt(price), currency.fmt(line))
            }
            _ => {
                let per = if unit == "ea" { "each".to_string() } else { format!("per {unit}") };
                format!("{description}\n    Qty {quantity} @ {} {per}    {}", amount(price), currency.fmt(line))
            }
        });
    }
    let header = match layout {
        0 => "Description    Qty    Unit Price    Amount".to_string(),
        1 => "Items".to_string(),
        _ => "Description of services / goods".to_string(),
    };

    let mut totals = vec![format!("Subtotal: {}", currency.fmt(subtotal))];
    let mut total = subtotal;
    if rng.chance(0.25) {
        let percent = rng.pick(&[5, 10, 15]);
        let discount = subtotal * percent / 100;
        total -= discount;
        totals.push(format!("Discount ({percent}%): -{}", currency.fmt(discount)));
    }
    if rng.chance(0.2) {
        let shipping = rng.range(15, 250) * 100;
        total += shipping;
        totals.push(format!("Shipping and handling: {}", currency.fmt(shipping)));
    }
    let (tax_name, rate) = rng.pick(&[
        ("VAT", 2000),
        ("VAT", 1900),
        ("Sales tax", 825),
        ("Sales tax", 600),
        ("GST", 1000),
        ("HST", 1300),
        ("Tax", 0),
    ]);
    let tax = total * rate / 10_000;
    total += tax;
    totals.push(format!("{tax_name} ({}%): {}", rate as f64 / 100.0, currency.fmt(tax)));
    totals.push(format!(
        "{} {}",
        rng.pick(&["Total:", "TOTAL DUE:", "Amount Due:", "Total amount:", "Balance Due:"]),
        currency.fmt(total)
    ));
    if rng.chance(0.15) {
        let paid = total / 2;
        totals.push(format!("Deposit received: -{}", currency.fmt(paid)));
        totals.push(format!("Balance due: {}", currency.fmt(total - paid)));
    }

    let terms = match rng.below(4) {
        0 => format!("Payment terms: Net {terms_days}. Please pay within {terms_days} days of the invoice date."),
        1 => format!(
            "Terms: payment due by {}. Please include the invoice number {number} with your payment.",
            due.format(style)
        ),
        2 => "Payment is due on receipt of this invoice.".to_string(),
        _ => format!(
            "Net {terms_days} days. Overdue balances accrue interest at {}% per month.",
            rng.pick(&["1", "1.5", "2"])
        ),
    };
    let mut payment = vec![terms];
    match rng.below(4) {
        0 => {
            payment.push("Bank transfer details:".to_string());
            payment.push(format!("Account name: {}", vendor.name));
            payment.push(format!("IBAN: {}", fill_pattern(rng, "@@## #### #### #### #### ##")));
            payment.push(format!("BIC/SWIFT: {}", fill_pattern(rng, "@@@@@@##")));
        }
        1 => {
            payment.push(format!(
                "Remit to: {} Bank, account {}, routing {}",
                vendor_address.city,
                fill_pattern(rng, "#########"),
                fill_pattern(rng, "#########")
            ));
        }
        2 => payment.push(format!("Pay online at https://pay.{}/i/{}", vendor.domain, fill_pattern(rng, "@#@#@#"))),
        _ => payment.push(format!("Please make checks payable to {}.", vendor.name.trim_end_matches('.'))),
    }
    if rng.chance(0.3) {
        payment.push(format!(
            "A late fee of {} applies to payments received after the due date.",
            currency.fmt(rng.range(25, 75) * 100)
        ));
    }

    let mut closing = Vec::new();
    if rng.chance(0.3) {
        closing.push(format!(
            "{} {}",
            rng.pick(&["Work performed under the", "Billed in accordance with the", "As the parties agreed in the"]),
            rng.pick(&[
                "Master Services Agreement",
                "statement of work",
                "purchase order",
                "service contract",
                "signed quote"
            ]),
        ));
    }
    if rng.chance(0.7) {
        closing.push(
            rng.pick(&[
                "Thank you for your business!",
                "Thank you for your prompt payment.",
                "We appreciate your business.",
                "Thank you!",
            ])
            .to_string(),
        );
    }
    if rng.chance(0.5) {
        closing.push(format!(
            "Questions about this invoice? Contact {} at {}.",
            sender.full(),
            sender.email(rng, &vendor.domain)
        ));
    }

    let mut head = vec![title.to_string(), vendor_block.join("\n")];
    if rng.chance(0.5) {
        head.swap(0, 1);
    }
    let mut parties = vec![details.join("\n"), bill_to.join("\n")];
    if rng.chance(0.5) {
        parties.swap(0, 1);
    }
    let mut sections = head;
    sections.extend(parties);
    sections.extend(ship_to);
    sections.push(format!("{header}\n{}", items.join("\n")));
    sections.push(totals.join("\n"));
    let mut tail = vec![payment.join("\n"), closing.join("\n")];
    if rng.chance(0.3) {
        tail.swap(0, 1);
    }
    sections.extend(tail);
    join_sections(sections)
}

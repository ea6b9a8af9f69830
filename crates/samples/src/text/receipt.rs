//! Till receipts: store header, purchased items, totals, card or cash payment, change and a footer.

use super::common::{Address, Currency, Date, Person, amount, fill_pattern, name_stem, phone};
use super::rng::Rng;

/// A kind of shop: words for its name and (item, lowest and highest price in cents).
struct Shop {
    names: &'static [&'static str],
    items: &'static [(&'static str, i64, i64)],
    restaurant: bool,
}

const SHOPS: &[Shop] = &[
    Shop {
        names: &["Market", "Grocers", "Fresh Market", "Foods", "Supermarket"],
        items: &[
            ("ORGANIC BANANAS", 120, 260),
            ("WHOLE MILK 1 GAL", 289, 449),
            ("SOURDOUGH BREAD", 349, 599),
            ("FREE RANGE EGGS 12", 329, 599),
            ("CHEDDAR CHEESE", 399, 799),
            ("GREEK YOGURT", 119, 549),
            ("CHICKEN BREAST", 699, 1399),
            ("PASTA 500G", 129, 299),
            ("OLIVE OIL", 699, 1499),
            ("APPLES GALA", 199, 449),
            ("COFFEE BEANS", 899, 1699),
            ("TOMATOES", 199, 399),
            ("SPARKLING WATER 6PK", 399, 699),
            ("RICE 2KG", 349, 699),
            ("DARK CHOCOLATE", 199, 449),
            ("PAPER TOWELS", 499, 1299),
        ],
        restaurant: false,
    },
    Shop {
        names: &["Coffee", "Coffee House", "Espresso Bar", "Bakery", "Cafe"],
        items: &[
            ("Latte 12oz", 375, 525),
            ("Cappuccino", 350, 495),
            ("Americano", 275, 395),
            ("Flat White", 375, 495),
            ("Croissant", 250, 395),
            ("Blueberry Muffin", 275, 395),
            ("Avocado Toast", 795, 1195),
            ("Chai Latte", 395, 545),
            ("Iced Tea", 250, 375),
            ("Bagel w/ Cream Cheese", 325, 495),
            ("Breakfast Sandwich", 595, 895),
            ("Extra Shot", 75, 125),
            ("Oat Milk", 50, 90),
        ],
        restaurant: false,
    },
    Shop {
        names: &["Hardware", "Home Center", "Tool Supply", "Building Supply"],
        items: &[
            ("WOOD SCREWS 1-5/8 IN", 599, 1199),
            ("INTERIOR PAINT 1 GAL", 2499, 4899),
            ("PAINT ROLLER KIT", 899, 1599),
            ("LED BULB 4PK", 799, 1499),
            ("DUCT TAPE", 499, 899),
            ("EXTENSION CORD 25FT", 1299, 2499),
            ("SANDPAPER ASSORTED", 399, 899),
            ("CORDLESS DRILL", 7999, 14999),
            ("WORK GLOVES", 799, 1899),
            ("PVC PIPE 10FT", 499, 1099),
            ("WALL ANCHORS", 349, 699),
            ("MEASURING TAPE 25FT", 899, 1899),
        ],
        restaurant: false,
    },
    Shop {
        names: &["Pharmacy", "Drugstore", "Health & Beauty", "Chemist"],
        items: &[
            ("IBUPROFEN 200MG 100CT", 699, 1299),
            ("VITAMIN D3", 899, 1599),
            ("TOOTHPASTE", 299, 599),
            ("SHAMPOO", 499, 999),
            ("BANDAGES 30CT", 399, 699),
            ("SUNSCREEN SPF 50", 899, 1599),
            ("COUGH SYRUP", 799, 1399),
            ("HAND SANITIZER", 199, 499),
            ("ALLERGY RELIEF", 999, 1899),
            ("PRESCRIPTION COPAY", 500, 3500),
            ("LIP BALM", 199, 399),
            ("COTTON SWABS", 249, 499),
        ],
        restaurant: false,
    },
    Shop {
        names: &["Books", "Bookshop", "Booksellers", "Stationers"],
        items: &[
            ("PAPERBACK FICTION", 999, 1899),
            ("HARDCOVER BIOGRAPHY", 2299, 3499),
            ("NOTEBOOK A5", 499, 1299),
            ("GREETING CARD", 399, 699),
            ("COOKBOOK", 1999, 3999),
            ("CHILDRENS PICTURE BOOK", 799, 1699),
            ("FOUNTAIN PEN", 1499, 4999),
            ("BOOKMARK", 199, 399),
            ("CALENDAR 2025", 1299, 1999),
            ("GIFT WRAP", 299, 599),
        ],
        restaurant: false,
    },
    Shop {
        names: &["Bistro", "Kitchen", "Grill", "Trattoria", "Diner"],
        items: &[
            ("Soup of the Day", 650, 995),
            ("Caesar Salad", 1095, 1495),
            ("Cheeseburger", 1395, 1895),
            ("Margherita Pizza", 1295, 1795),
            ("Grilled Salmon", 2195, 2995),
            ("Fish and Chips", 1595, 2195),
            ("Pasta Carbonara", 1495, 1995),
            ("Iced Lemonade", 395, 595),
            ("House Red Wine", 895, 1395),
            ("Draft Beer", 650, 950),
            ("Tiramisu", 795, 1095),
            ("Espresso", 295, 395),
        ],
        restaurant: true,
    },
    Shop {
        names: &["Fuel", "Gas & Go", "Service Station", "Petroleum"],
        items: &[
            ("UNLEADED", 3000, 8500),
            ("DIESEL", 4000, 11000),
            ("CAR WASH DELUXE", 999, 1599),
            ("WINDSHIELD FLUID", 399, 699),
            ("ENERGY DRINK", 299, 449),
            ("BOTTLED WATER", 149, 299),
            ("BEEF JERKY", 599, 999),
            ("MOTOR OIL 1QT", 699, 1199),
            ("SNACK BAR", 149, 299),
        ],
        restaurant: false,
    },
    Shop {
        names: &["Electronics", "Tech Store", "Digital", "Computers"],
        items: &[
            ("USB-C CABLE 2M", 999, 2499),
            ("WIRELESS MOUSE", 1999, 4999),
            ("HDMI ADAPTER", 1499, 2999),
            ("PHONE CASE", 1499, 3999),
            ("SCREEN PROTECTOR", 999, 2499),
            ("BLUETOOTH SPEAKER", 3999, 9999),
            ("AA BATTERIES 8PK", 699, 1299),
            ("MEMORY CARD 128GB", 1499, 3499),
            ("EARBUDS", 2999, 14999),
            ("PROTECTION PLAN 2YR", 1999, 4999),
        ],
        restaurant: false,
    },
];

pub(crate) fn generate(rng: &mut Rng) -> String {
    let shop = rng.pick_ref(SHOPS);
    let name = format!("{} {}", name_stem(rng), rng.pick(shop.names));
    let address = Address::random(rng);
    let currency = Currency::random(rng);
    let date = Date::random(rng);
    let time = format!("{:02}:{:02}", rng.range(7, 21), rng.range(0, 59));
    let cashier = Person::random(rng);
    let upper = rng.chance(0.6);

    let mut lines = Vec::new();
    lines.push(if upper { name.to_uppercase() } else { name.clone() });
    if rng.chance(0.4) {
        lines.push(
            rng.pick(&[
                "Fresh. Local. Friendly.",
                "Quality you can trust since 1987",
                "Your neighbourhood store",
                "Where every visit counts",
            ])
            .to_string(),
        );
    }
    if rng.chance(0.3) {
        lines.push(format!("Store #{}", rng.range(10, 2_999)));
    }
    lines.extend(address.lines());
    lines.push(format!("Tel {}", phone(rng)));
    if rng.chance(0.3) {
        lines.push(format!("VAT No. {}", fill_pattern(rng, "@@#########")));
    }
    lines.push(String::new());
    match rng.below(3) {
        0 => lines.push(format!("{} {time}", date.format(3))),
        1 => lines.push(format!("Date: {}  Time: {time}", date.format(rng.below(6)))),
        _ => lines.push(format!(
            "{} {time}  Reg {}  Trans {}",
            date.format(4),
            rng.range(1, 12),
            rng.range(1_000, 99_999)
        )),
    }
    if shop.restaurant {
        lines.push(format!("Table {}  Server: {}  Guests: {}", rng.range(1, 40), cashier.first, rng.range(1, 6)));
    } else {
        lines.push(format!("{} {}", rng.pick(&["Cashier:", "Served by:", "Operator:", "Associate:"]), cashier.first));
    }
    lines.push(String::new());

    let count = rng.range(7, 12) as usize;
    let mut subtotal = 0;
    let mut item_count = 0;
    for &(item, low, high) in &rng.sample(shop.items, count) {
        let price = rng.range(low, high);
        let quantity = if rng.chance(0.25) { rng.range(2, 4) } else { 1 };
        let line = price * quantity;
        subtotal += line;
        item_count += quantity;
        let item = if upper { item.to_uppercase() } else { item.to_string() };
        if quantity > 1 {
            lines.push(format!("{item}\n  {quantity} @ {}    {}", amount(price), amount(line)));
        } else if rng.chance(0.2) {
            lines.push(format!("{item}  {}    {}", fill_pattern(rng, "#########"), amount(line)));
        } else {
            lines.push(format!("{item}    {}", amount(line)));
        }
    }
    if rng.chance(0.25) {
        let saving = subtotal / 10;
        subtotal -= saving;
        lines.push(format!(
            "{}    -{}",
            rng.pick(&["MEMBER DISCOUNT", "Coupon", "PROMO SAVINGS", "Loyalty reward"]),
            amount(saving)
        ));
    }
    lines.push(String::new());

    let rate = rng.pick(&[0, 500, 625, 700, 825, 875, 1000, 2000]);
    let tax = subtotal * rate / 10_000;
    let mut total = subtotal + tax;
    lines.push(format!("SUBTOTAL    {}", amount(subtotal)));
    lines.push(format!(
        "{}    {}",
        if rate == 0 { "TAX".to_string() } else { format!("TAX {}%", rate as f64 / 100.0) },
        amount(tax)
    ));
    if shop.restaurant && rng.chance(0.6) {
        let tip = total * rng.pick(&[15, 18, 20, 22]) / 100;
        lines.push(format!("TIP    {}", amount(tip)));
        total += tip;
    }
    lines.push(format!("TOTAL    {}", currency.fmt(total)));
    if rng.chance(0.5) {
        lines.push(format!("ITEMS SOLD: {item_count}"));
    }
    lines.push(String::new());

    if rng.chance(0.3) {
        let tendered = (total / 500 + 1) * 500 + rng.pick(&[0, 500, 1_000, 1_500]);
        lines.push(format!("CASH    {}", amount(tendered)));
        lines.push(format!("CHANGE    {}", amount(tendered - total)));
    } else {
        let card = rng.pick(&["VISA", "MASTERCARD", "AMEX", "DEBIT", "DISCOVER", "MAESTRO"]);
        lines.push(format!("{card}    {}", amount(total)));
        let last_four = fill_pattern(rng, "####");
        lines.push(match rng.below(3) {
            0 => format!("Card: XXXX XXXX XXXX {last_four}"),
            1 => format!("Card number ending in {last_four}"),
            _ => format!("ACCT: XXXXXXXXXXXX{last_four}"),
        });
        lines.push(format!("Entry: {}", rng.pick(&["CHIP", "CONTACTLESS", "TAP", "SWIPED", "APPLE PAY"])));
        lines.push(format!("Auth code: {}", fill_pattern(rng, "#####@")));
        if rng.chance(0.6) {
            lines.push(format!(
                "Merchant ID: {}  Terminal: {}",
                fill_pattern(rng, "##########"),
                fill_pattern(rng, "T####")
            ));
        }
        if rng.chance(0.5) {
            lines.push(format!("AID: A0000000{}", fill_pattern(rng, "######")));
        }
        lines.push(rng.pick(&["APPROVED", "Approved - Thank you", "TRANSACTION APPROVED"]).to_string());
        lines.push("CHANGE    0.00".to_string());
    }
    lines.push(String::new());

    let thanks = rng.pick(&[
        "THANK YOU FOR SHOPPING WITH US!",
        "Thank you for your visit!",
        "THANK YOU - PLEASE COME AGAIN",
        "Thanks for stopping by, see you soon!",
        "Thank you for dining with us!",
    ]);
    let survey = format!(
        "Tell us about your visit at www.{}.com/survey and enter to win a {} gift card.",
        super::common::ascii_slug(&name),
        currency.fmt(rng.range(1, 10) * 5_000)
    );
    let earned = total / 100;
    let points = format!("Rewards points earned today: {earned}  Balance: {}", earned + rng.range(20, 3_000));
    let receipt_number = format!("Receipt No. {}  Till {}", fill_pattern(rng, "####-####-####"), rng.range(1, 9));
    let policy = rng.pick(&[
        "Returns and exchanges within 30 days with receipt.",
        "Please keep your receipt for returns or exchanges.",
        "No refunds on sale items. Exchanges within 14 days.",
        "Refunds are issued to the original form of payment.",
    ]);
    let slogan = rng.pick(&[
        "Open 7 days a week, 7am - 10pm",
        "Now open Sundays!",
        "Follow us online for weekly offers",
        "Ask about our loyalty card",
    ]);
    let extras = [survey, points, receipt_number, policy.to_string(), slogan.to_string(), "Customer copy".to_string()];
    let mut footer = vec![thanks.to_string()];
    let extra_count = rng.range(3, 4) as usize;
    footer.extend(rng.sample(&extras, extra_count));
    lines.extend(footer);
    lines.join("\n")
}

//! Vocabulary every class draws on — people, companies, places, dates, money — so that classes share
//! words the way real documents do, and the classifier has to learn structure rather than names.

use super::rng::Rng;

/// First names with the honorific letters use for them (`f` → Ms., `m` → Mr.).
const FIRST_NAMES: &[(&str, char)] = &[
    ("James", 'm'),
    ("Maria", 'f'),
    ("Robert", 'm'),
    ("Linda", 'f'),
    ("Michael", 'm'),
    ("Sarah", 'f'),
    ("David", 'm'),
    ("Emily", 'f'),
    ("Daniel", 'm'),
    ("Laura", 'f'),
    ("Thomas", 'm'),
    ("Anna", 'f'),
    ("Richard", 'm'),
    ("Olivia", 'f'),
    ("Joseph", 'm'),
    ("Sophie", 'f'),
    ("Charles", 'm'),
    ("Grace", 'f'),
    ("Peter", 'm'),
    ("Hannah", 'f'),
    ("Mark", 'm'),
    ("Julia", 'f'),
    ("Paul", 'm'),
    ("Chloe", 'f'),
    ("Steven", 'm'),
    ("Emma", 'f'),
    ("Andrew", 'm'),
    ("Rachel", 'f'),
    ("Kevin", 'm'),
    ("Megan", 'f'),
    ("Brian", 'm'),
    ("Nicole", 'f'),
    ("George", 'm'),
    ("Helen", 'f'),
    ("Edward", 'm'),
    ("Claire", 'f'),
    ("José", 'm'),
    ("Zoë", 'f'),
    ("Renée", 'f'),
    ("François", 'm'),
    ("Søren", 'm'),
    ("Siobhán", 'f'),
    ("Amara", 'f'),
    ("Kenji", 'm'),
    ("Priya", 'f'),
    ("Mateo", 'm'),
    ("Ingrid", 'f'),
    ("Tariq", 'm'),
    ("Lucía", 'f'),
    ("Noah", 'm'),
    ("Fatima", 'f'),
    ("Oliver", 'm'),
    ("Aisha", 'f'),
    ("Lars", 'm'),
    ("Mei", 'f'),
    ("Rahul", 'm'),
    ("Elena", 'f'),
    ("Hugo", 'm'),
    ("Nadia", 'f'),
    ("Victor", 'm'),
];

const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Miller",
    "Davis",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Martin",
    "Jackson",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
    "Walker",
    "Hall",
    "Young",
    "King",
    "Wright",
    "Green",
    "Baker",
    "Adams",
    "Nelson",
    "Carter",
    "Mitchell",
    "Roberts",
    "Turner",
    "Phillips",
    "Campbell",
    "Müller",
    "García",
    "Núñez",
    "O'Brien",
    "Kowalski",
    "Nakamura",
    "Okafor",
    "Johansson",
    "Dubois",
    "Rossi",
    "Schneider",
    "Fernández",
    "Novak",
    "Larsen",
    "Patel",
    "Chen",
    "Kim",
    "Singh",
    "Haddad",
    "Moreau",
    "Bianchi",
    "Brennan",
    "Fischer",
    "Lindqvist",
    "Sato",
    "Ivanova",
];

const COMPANY_STEMS: &[&str] = &[
    "Northwind",
    "Bluebird",
    "Harbor",
    "Summit",
    "Crescent",
    "Ironwood",
    "Silverline",
    "Maple",
    "Granite",
    "Beacon",
    "Pioneer",
    "Redwood",
    "Atlas",
    "Orion",
    "Keystone",
    "Cobalt",
    "Lakeside",
    "Meridian",
    "Evergreen",
    "Sterling",
    "Falcon",
    "Willow",
    "Brightpath",
    "Copperleaf",
    "Riverside",
    "Horizon",
    "Oakridge",
    "Bayview",
    "Clearwater",
    "Vantage",
    "Highland",
    "Quantum",
    "Juniper",
    "Aspen",
    "Westbrook",
    "Fairfield",
    "Bridgeport",
    "Starling",
];

const COMPANY_TRADES: &[&str] = &[
    "Logistics",
    "Analytics",
    "Consulting",
    "Supplies",
    "Software",
    "Foods",
    "Engineering",
    "Health",
    "Design",
    "Energy",
    "Media",
    "Systems",
    "Construction",
    "Partners",
    "Labs",
    "Manufacturing",
    "Capital",
    "Solutions",
    "Printing",
    "Office Supply",
    "Freight",
    "Marketing",
    "Facilities",
    "Electric",
    "Dental Care",
    "Legal Services",
    "Architects",
    "Hospitality",
    "Insurance",
    "Telecom",
];

const COMPANY_SUFFIXES: &[&str] = &["Inc.", "LLC", "Ltd", "GmbH", "Corp.", "Group", "& Co.", "S.A.", "", "", ""];

const STREETS: &[&str] = &[
    "Main",
    "Oak",
    "Pine",
    "Maple",
    "Cedar",
    "Elm",
    "Washington",
    "Lake",
    "Hill",
    "Park",
    "River",
    "Church",
    "Market",
    "Station",
    "Mill",
    "Bridge",
    "King",
    "Queen",
    "Victoria",
    "Harbour",
    "Orchard",
    "Spring",
    "Highland",
    "Sunset",
];

const STREET_KINDS: &[&str] = &["Street", "Avenue", "Road", "Lane", "Boulevard", "Drive", "Way", "Place", "Court"];

/// (city, region, postcode pattern) — `#` is a digit, `@` an upper-case letter.
const PLACES: &[(&str, &str, &str)] = &[
    ("Springfield", "IL", "627##"),
    ("Portland", "OR", "972##"),
    ("Austin", "TX", "787##"),
    ("Denver", "CO", "802##"),
    ("Boston", "MA", "021##"),
    ("Seattle", "WA", "981##"),
    ("Chicago", "IL", "606##"),
    ("Columbus", "OH", "432##"),
    ("Raleigh", "NC", "276##"),
    ("San Diego", "CA", "921##"),
    ("Madison", "WI", "537##"),
    ("Toronto", "ON", "M@# #@#"),
    ("Vancouver", "BC", "V@# #@#"),
    ("Manchester", "", "M## #@@"),
    ("Bristol", "", "BS# #@@"),
    ("Leeds", "", "LS# #@@"),
    ("Dublin", "", "D## @###"),
    ("Berlin", "", "10###"),
    ("Munich", "", "80###"),
    ("Lyon", "", "690##"),
    ("Amsterdam", "", "10## @@"),
    ("Copenhagen", "", "2###"),
    ("Madrid", "", "280##"),
    ("Melbourne", "VIC", "30##"),
];

pub(crate) const MONTHS: &[&str] = &[
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A person's name.
#[derive(Clone)]
pub(crate) struct Person {
    pub first: &'static str,
    pub last: &'static str,
    female: bool,
}

impl Person {
    pub(crate) fn random(rng: &mut Rng) -> Self {
        let (first, gender) = rng.pick(FIRST_NAMES);
        Self { first, last: rng.pick(LAST_NAMES), female: gender == 'f' }
    }

    /// "Ms.", "Mrs.", "Mr." or "Dr.", as a letter would address this person.
    pub(crate) fn honorific(&self, rng: &mut Rng) -> &'static str {
        match (self.female, rng.below(6)) {
            (_, 0) => "Dr.",
            (true, 1) => "Mrs.",
            (true, _) => "Ms.",
            (false, _) => "Mr.",
        }
    }

    pub(crate) fn full(&self) -> String {
        format!("{} {}", self.first, self.last)
    }

    /// An e-mail address for this person at `domain`, in one of the usual patterns.
    pub(crate) fn email(&self, rng: &mut Rng, domain: &str) -> String {
        let first = ascii_slug(self.first);
        let last = ascii_slug(self.last);
        match rng.below(4) {
            0 => format!("{first}.{last}@{domain}"),
            1 => format!("{}{last}@{domain}", &first[..1]),
            2 => format!("{first}@{domain}"),
            _ => format!("{first}_{last}{}@{domain}", rng.range(1, 99)),
        }
    }
}

/// A word companies and shops are named after ("Northwind", "Harbor").
pub(crate) fn name_stem(rng: &mut Rng) -> &'static str {
    rng.pick(COMPANY_STEMS)
}

/// A job title people sign letters and contracts with.
pub(crate) fn job_title(rng: &mut Rng) -> &'static str {
    rng.pick(&[
        "Chief Executive Officer",
        "Managing Director",
        "Operations Manager",
        "Finance Director",
        "Office Manager",
        "Head of Procurement",
        "Account Manager",
        "General Counsel",
        "Project Manager",
        "Chief Financial Officer",
        "Customer Service Manager",
        "Human Resources Manager",
        "Director of Sales",
        "Partner",
        "Owner",
    ])
}

/// A company: a name and the web domain derived from it.
#[derive(Clone)]
pub(crate) struct Company {
    pub name: String,
    pub domain: String,
}

impl Company {
    pub(crate) fn random(rng: &mut Rng) -> Self {
        let trade = rng.pick(COMPANY_TRADES);
        Self::in_trade(rng, trade)
    }

    /// A company whose name says what it does ("Harbor Logistics Ltd" for `trade` "Logistics").
    pub(crate) fn in_trade(rng: &mut Rng, trade: &str) -> Self {
        let stem = rng.pick(COMPANY_STEMS);
        let suffix = rng.pick(COMPANY_SUFFIXES);
        let name = if suffix.is_empty() { format!("{stem} {trade}") } else { format!("{stem} {trade} {suffix}") };
        let tld = rng.pick(&["com", "com", "net", "co.uk", "de", "io", "org"]);
        let domain =
            format!("{}{}.{tld}", ascii_slug(stem), if rng.chance(0.5) { ascii_slug(trade) } else { String::new() });
        Self { name, domain }
    }

    /// The name without the legal suffix, as people write it in running text.
    pub(crate) fn short(&self) -> String {
        COMPANY_SUFFIXES
            .iter()
            .filter(|suffix| !suffix.is_empty())
            .find_map(|suffix| self.name.strip_suffix(&format!(" {suffix}")))
            .unwrap_or(&self.name)
            .to_owned()
    }
}

/// A postal address.
pub(crate) struct Address {
    pub street: String,
    pub city_line: String,
    pub city: &'static str,
}

impl Address {
    pub(crate) fn random(rng: &mut Rng) -> Self {
        let street = match rng.below(5) {
            0 => format!(
                "{} {} {}, Suite {}",
                rng.range(1, 9800),
                rng.pick(STREETS),
                rng.pick(STREET_KINDS),
                rng.range(100, 950)
            ),
            1 => format!(
                "{} {} {}, Floor {}",
                rng.range(1, 400),
                rng.pick(STREETS),
                rng.pick(STREET_KINDS),
                rng.range(2, 30)
            ),
            _ => format!("{} {} {}", rng.range(1, 9800), rng.pick(STREETS), rng.pick(STREET_KINDS)),
        };
        let (city, region, pattern) = rng.pick(PLACES);
        let postcode = fill_pattern(rng, pattern);
        let city_line = match region {
            "" if postcode.starts_with(|c: char| c.is_ascii_digit()) => format!("{postcode} {city}"),
            "" => format!("{city} {postcode}"),
            _ => format!("{city}, {region} {postcode}"),
        };
        Self { street, city_line, city }
    }

    pub(crate) fn lines(&self) -> [String; 2] {
        [self.street.clone(), self.city_line.clone()]
    }

    pub(crate) fn one_line(&self) -> String {
        format!("{}, {}", self.street, self.city_line)
    }
}

/// A calendar date between 2017 and 2026.
#[derive(Clone, Copy)]
pub(crate) struct Date {
    pub year: i64,
    pub month: usize,
    pub day: i64,
}

impl Date {
    pub(crate) fn random(rng: &mut Rng) -> Self {
        let year = rng.range(2017, 2026);
        let month = rng.range(1, 12) as usize;
        let day = rng.range(1, days_in_month(year, month));
        Self { year, month, day }
    }

    /// The date `days` later.
    pub(crate) fn plus_days(self, days: i64) -> Self {
        let mut date = self;
        let mut left = days;
        while left > 0 {
            let step = (days_in_month(date.year, date.month) - date.day + 1).min(left);
            date.day += step;
            left -= step;
            if date.day > days_in_month(date.year, date.month) {
                date.day = 1;
                date.month += 1;
                if date.month > 12 {
                    date.month = 1;
                    date.year += 1;
                }
            }
        }
        date
    }

    pub(crate) fn long(&self) -> String {
        format!("{} {}, {}", MONTHS[self.month - 1], self.day, self.year)
    }

    pub(crate) fn month_year(&self) -> String {
        format!("{} {}", &MONTHS[self.month - 1][..3], self.year)
    }

    /// One of the formats documents commonly use; `style` picks it so a document stays consistent.
    pub(crate) fn format(&self, style: usize) -> String {
        let month = MONTHS[self.month - 1];
        match style % 6 {
            0 => self.long(),
            1 => format!("{} {} {}", self.day, month, self.year),
            2 => format!("{:04}-{:02}-{:02}", self.year, self.month, self.day),
            3 => format!("{:02}/{:02}/{}", self.month, self.day, self.year),
            4 => format!("{:02}.{:02}.{}", self.day, self.month, self.year),
            _ => format!("{} {}, {}", &month[..3], self.day, self.year),
        }
    }
}

fn days_in_month(year: i64, month: usize) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// How a document writes money: a symbol or an ISO code before the amount.
#[derive(Clone, Copy)]
pub(crate) struct Currency(&'static str);

impl Currency {
    pub(crate) fn random(rng: &mut Rng) -> Self {
        Self(rng.pick(&["$", "$", "$", "USD ", "EUR ", "GBP ", "CAD ", "AUD "]))
    }

    /// `cents` as e.g. `$1,234.50`.
    pub(crate) fn fmt(&self, cents: i64) -> String {
        format!("{}{}", self.0, amount(cents))
    }
}

/// `cents` as `1,234.50` (no currency).
pub(crate) fn amount(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.abs();
    format!("{sign}{}.{:02}", grouped(cents / 100), cents % 100)
}

/// A whole number with thousands separators: `1234567` → `1,234,567`.
pub(crate) fn grouped(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::from(if n < 0 { "-" } else { "" });
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A phone number in a North American or international style.
pub(crate) fn phone(rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => format!("({}) {}-{:04}", rng.range(201, 989), rng.range(200, 999), rng.range(0, 9999)),
        1 => format!("+44 {} {:04} {:04}", rng.range(20, 79), rng.range(0, 9999), rng.range(0, 9999)),
        _ => format!("+{} {} {:07}", rng.range(30, 49), rng.range(10, 99), rng.range(0, 9_999_999)),
    }
}

/// Replaces `#` with digits and `@` with upper-case letters.
pub(crate) fn fill_pattern(rng: &mut Rng, pattern: &str) -> String {
    pattern
        .chars()
        .map(|c| match c {
            '#' => char::from(b'0' + rng.below(10) as u8),
            '@' => char::from(b'A' + rng.below(26) as u8),
            other => other,
        })
        .collect()
}

/// Lower-case ASCII letters of `s`, accents removed, for e-mail addresses and domains.
pub(crate) fn ascii_slug(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            'a'..='z' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            'á' | 'à' | 'ä' | 'â' | 'å' => Some('a'),
            'é' | 'è' | 'ë' | 'ê' => Some('e'),
            'í' | 'ï' => Some('i'),
            'ó' | 'ö' | 'ø' | 'ô' => Some('o'),
            'ú' | 'ü' => Some('u'),
            'ñ' => Some('n'),
            'ç' => Some('c'),
            _ => None,
        })
        .collect()
}

/// Joins sections with a blank line between them, dropping empty ones.
pub(crate) fn join_sections(sections: Vec<String>) -> String {
    sections.into_iter().filter(|s| !s.trim().is_empty()).collect::<Vec<_>>().join("\n\n")
}

/// Fills `{a}`-style slots in `template` from `values`.
pub(crate) fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (key, value) in values {
        out = out.replace(&format!("{{{key}}}"), value);
    }
    out
}

/// An upper-case first letter.
pub(crate) fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// "MASTER SERVICES AGREEMENT" → "Master Services Agreement"; short joining words stay lower case.
pub(crate) fn title_case(s: &str) -> String {
    s.split(' ')
        .enumerate()
        .map(|(i, word)| {
            let lower = word.to_lowercase();
            if i > 0 && ["a", "an", "as", "of", "and", "the", "for", "to", "in"].contains(&lower.as_str()) {
                lower
            } else {
                capitalize(&lower)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_grouped_by_thousands() {
        assert_eq!(amount(0), "0.00");
        assert_eq!(amount(5), "0.05");
        assert_eq!(amount(123_456), "1,234.56");
        assert_eq!(amount(100_000_000), "1,000,000.00");
        assert_eq!(amount(-2_550), "-25.50");
        assert_eq!(grouped(250_000), "250,000");
        assert_eq!(grouped(999), "999");
    }

    #[test]
    fn dates_advance_across_months_and_years() {
        let date = Date { year: 2024, month: 12, day: 20 };
        let later = date.plus_days(30);
        assert_eq!((later.year, later.month, later.day), (2025, 1, 19));
        let leap = Date { year: 2024, month: 2, day: 28 }.plus_days(1);
        assert_eq!((leap.month, leap.day), (2, 29));
        assert_eq!(Date { year: 2023, month: 3, day: 4 }.format(2), "2023-03-04");
    }

    #[test]
    fn company_short_name_drops_the_legal_suffix() {
        let company = Company { name: "Atlas Freight & Co.".into(), domain: String::new() };
        assert_eq!(company.short(), "Atlas Freight");
        let company = Company { name: "Atlas Freight GmbH".into(), domain: String::new() };
        assert_eq!(company.short(), "Atlas Freight");
    }

    #[test]
    fn title_case_keeps_joining_words_small() {
        assert_eq!(title_case("SOFTWARE AS A SERVICE AGREEMENT"), "Software as a Service Agreement");
        assert_eq!(title_case("Non-Disclosure Agreement"), "Non-disclosure Agreement");
    }

    #[test]
    fn slugs_are_plain_ascii() {
        assert_eq!(ascii_slug("Núñez"), "nunez");
        assert_eq!(ascii_slug("O'Brien"), "obrien");
        assert_eq!(ascii_slug("Søren"), "soren");
    }
}

//! Résumés: name and contact details, then summary, experience, education, skills and optional
//! sections in one of several orders.

use super::common::{Address, Company, MONTHS, Person, ascii_slug, fill, grouped, phone};
use super::rng::Rng;

/// A profession: job titles from junior to senior, achievement bullets (`{n}` a percentage, `{m}` a
/// count, `{money}` an amount), skills and degrees.
struct Field {
    titles: &'static [&'static str],
    bullets: &'static [&'static str],
    skills: &'static [&'static str],
    degrees: &'static [&'static str],
    summary: &'static str,
    /// What employers in this field are called ("Hospital", "Academy").
    employers: &'static [&'static str],
}

const FIELDS: &[Field] = &[
    Field {
        titles: &["Accounts Payable Clerk", "Staff Accountant", "Senior Accountant", "Finance Manager", "Controller"],
        bullets: &[
            "Processed {m} vendor invoices per month and cut payment errors by {n}%",
            "Led the month-end close for {m} entities, shortening it from ten to six days",
            "Reconciled bank, payroll and credit card accounts and resolved discrepancies",
            "Prepared audit schedules and supported the annual external audit with no findings",
            "Automated expense reporting, saving an estimated {money} a year",
            "Built the budget and quarterly forecasts for a {money} cost center",
            "Implemented a new ERP purchase-to-pay workflow used by {m} staff",
        ],
        skills: &[
            "Excel (advanced)",
            "SAP",
            "QuickBooks",
            "NetSuite",
            "GAAP",
            "IFRS",
            "Accounts payable",
            "Financial reporting",
            "Budgeting",
            "Variance analysis",
            "Power BI",
            "Tax compliance",
        ],
        degrees: &["B.Sc. Accounting", "Bachelor of Commerce", "MBA, Finance", "B.A. Economics"],
        summary: "Detail-oriented finance professional with {years} years of experience in accounting, reporting and process improvement.",
        employers: &["Accounting", "Financial Services", "Manufacturing", "Capital", "Insurance"],
    },
    Field {
        titles: &[
            "Junior Developer",
            "Software Engineer",
            "Senior Software Engineer",
            "Tech Lead",
            "Engineering Manager",
        ],
        bullets: &[
            "Designed and shipped a billing service handling {m} thousand requests per day",
            "Reduced API latency by {n}% by profiling queries and adding caching",
            "Migrated a legacy monolith to containerised services on Kubernetes",
            "Mentored {m} engineers and introduced code review guidelines",
            "Built CI/CD pipelines that cut release time from days to hours",
            "Wrote integration tests that raised coverage from 40% to {n}%",
            "Led the rewrite of the mobile checkout, increasing conversion by {n}%",
        ],
        skills: &[
            "Rust",
            "Python",
            "Java",
            "TypeScript",
            "Go",
            "PostgreSQL",
            "Docker",
            "Kubernetes",
            "AWS",
            "gRPC",
            "React",
            "Linux",
            "Git",
            "Distributed systems",
        ],
        degrees: &[
            "B.Sc. Computer Science",
            "M.Sc. Software Engineering",
            "B.Eng. Electrical Engineering",
            "B.Sc. Mathematics",
        ],
        summary: "Software engineer with {years} years of experience building reliable backend systems and leading small teams.",
        employers: &["Software", "Systems", "Labs", "Analytics", "Technologies"],
    },
    Field {
        titles: &[
            "Marketing Assistant",
            "Marketing Coordinator",
            "Digital Marketing Specialist",
            "Marketing Manager",
            "Head of Marketing",
        ],
        bullets: &[
            "Planned and ran campaigns with a combined budget of {money}",
            "Grew newsletter subscribers to {m} thousand in two years",
            "Increased organic search traffic by {n}% through content and SEO work",
            "Managed social media channels with a combined audience of {m} thousand",
            "Coordinated trade show presence at {m} industry events",
            "Launched a customer referral program that generated {n}% of new leads",
        ],
        skills: &[
            "SEO",
            "Google Analytics",
            "Content strategy",
            "Copywriting",
            "HubSpot",
            "Social media",
            "Adobe Creative Suite",
            "Email marketing",
            "Market research",
            "A/B testing",
        ],
        degrees: &["B.A. Marketing", "B.A. Communications", "B.B.A. Business Administration", "M.A. Media Studies"],
        summary: "Creative marketer with {years} years of experience turning customer insight into campaigns that grow revenue.",
        employers: &["Marketing", "Media", "Retail", "Foods", "Brands"],
    },
    Field {
        titles: &["Staff Nurse", "Registered Nurse", "Charge Nurse", "Clinical Nurse Specialist", "Nurse Manager"],
        bullets: &[
            "Provided care for up to {m} patients per shift on a busy surgical ward",
            "Trained {m} new graduate nurses in medication safety procedures",
            "Reduced patient falls on the unit by {n}% through a new rounding protocol",
            "Coordinated discharge planning with physicians, pharmacists and families",
            "Served on the infection control committee for {y} years",
        ],
        skills: &[
            "Patient assessment",
            "IV therapy",
            "Wound care",
            "Electronic health records",
            "BLS/ACLS",
            "Triage",
            "Care planning",
            "Team leadership",
        ],
        degrees: &["Bachelor of Science in Nursing", "Diploma in Nursing", "M.Sc. Nursing"],
        summary: "Compassionate registered nurse with {years} years of acute care experience and a focus on patient safety.",
        employers: &["Hospital", "Medical Center", "Health", "Clinic", "Care Home"],
    },
    Field {
        titles: &[
            "Sales Associate",
            "Account Executive",
            "Senior Account Executive",
            "Regional Sales Manager",
            "Sales Director",
        ],
        bullets: &[
            "Exceeded annual quota by {n}% and closed {money} in new business",
            "Managed a portfolio of {m} key accounts with a retention rate of 95%",
            "Opened {m} new distributor relationships in the region",
            "Negotiated multi-year contracts with enterprise customers",
            "Ranked in the top {n}% of the national sales team for three years",
        ],
        skills: &[
            "Salesforce",
            "Negotiation",
            "Account management",
            "Forecasting",
            "Cold calling",
            "Contract negotiation",
            "CRM",
            "Public speaking",
        ],
        degrees: &["B.A. Business", "B.B.A. Marketing", "B.A. Psychology"],
        summary: "Results-driven sales professional with {years} years of experience in B2B sales and key account management.",
        employers: &["Industries", "Supplies", "Telecom", "Distribution", "Equipment"],
    },
    Field {
        titles: &[
            "Project Coordinator",
            "Project Manager",
            "Senior Project Manager",
            "Program Manager",
            "PMO Director",
        ],
        bullets: &[
            "Delivered {m} projects on time and within a total budget of {money}",
            "Introduced agile practices that improved delivery predictability by {n}%",
            "Managed vendor contracts and monthly invoices for outsourced work",
            "Prepared weekly status reports for the steering committee",
            "Coordinated a cross-functional team of {m} people across three sites",
        ],
        skills: &[
            "PMP",
            "Scrum",
            "Risk management",
            "Jira",
            "MS Project",
            "Stakeholder management",
            "Budget tracking",
            "Vendor management",
        ],
        degrees: &["B.Sc. Industrial Engineering", "B.A. Business Administration", "M.Sc. Project Management"],
        summary: "Certified project manager with {years} years of experience delivering complex projects for demanding clients.",
        employers: &["Construction", "Engineering", "Consulting", "Energy", "Group"],
    },
    Field {
        titles: &[
            "Warehouse Associate",
            "Logistics Coordinator",
            "Supply Chain Analyst",
            "Logistics Manager",
            "Head of Supply Chain",
        ],
        bullets: &[
            "Coordinated {m} inbound and outbound shipments per week",
            "Cut freight costs by {n}% by consolidating carriers",
            "Implemented a barcode inventory system across {m} warehouses",
            "Improved on-time delivery from 88% to {n}%",
            "Managed a transport budget of {money}",
        ],
        skills: &[
            "Inventory control",
            "SAP",
            "Freight forwarding",
            "Customs documentation",
            "Excel",
            "Lean",
            "Forklift certified",
            "Demand planning",
        ],
        degrees: &["B.Sc. Supply Chain Management", "B.A. Economics", "Diploma in Logistics"],
        summary: "Logistics professional with {years} years of experience keeping goods moving on time and on budget.",
        employers: &["Logistics", "Freight", "Distribution", "Wholesale", "Transport"],
    },
    Field {
        titles: &["Teaching Assistant", "Teacher", "Senior Teacher", "Head of Department", "Assistant Principal"],
        bullets: &[
            "Taught mathematics and science to classes of up to {m} students",
            "Raised exam pass rates in the department by {n}%",
            "Designed a new curriculum for the after-school coding club",
            "Organised parent-teacher conferences and school trips for {m} students",
            "Mentored {y} trainee teachers through their placements",
        ],
        skills: &[
            "Curriculum design",
            "Classroom management",
            "Assessment",
            "Google Classroom",
            "Differentiated instruction",
            "Special educational needs",
        ],
        degrees: &["B.Ed. Secondary Education", "PGCE Mathematics", "M.A. Education"],
        summary: "Dedicated teacher with {years} years of classroom experience and a record of improving student outcomes.",
        employers: &["Academy", "High School", "School District", "College", "Learning Trust"],
    },
];

const UNIVERSITIES: &[&str] = &[
    "University of Manchester",
    "Ohio State University",
    "University of Toronto",
    "Trinity College Dublin",
    "University of Texas at Austin",
    "Technical University of Munich",
    "University of Washington",
    "King's College London",
    "University of Copenhagen",
    "Boston University",
    "University of Melbourne",
    "Université de Lyon",
];

pub(crate) fn generate(rng: &mut Rng) -> String {
    let field = rng.pick_ref(FIELDS);
    let person = Person::random(rng);
    let home = Address::random(rng);
    let domain = rng.pick(&["gmail.com", "outlook.com", "yahoo.com", "protonmail.com", "icloud.com"]);
    let years_working = rng.range(3, 18);
    let current_year = rng.range(2019, 2026);
    let month = |rng: &mut Rng| &MONTHS[rng.below(12)][..3];

    let mut header = vec![if rng.chance(0.4) { person.full().to_uppercase() } else { person.full() }];
    if rng.chance(0.5) {
        header.push(field.titles[current_level(years_working, field)].to_string());
    }
    let email = person.email(rng, domain);
    let mut contact = vec![home.city.to_string(), phone(rng), email];
    if rng.chance(0.5) {
        contact.push(format!("linkedin.com/in/{}{}", ascii_slug(person.first), ascii_slug(person.last)));
    }
    rng.shuffle(&mut contact[1..]);
    if rng.chance(0.5) {
        header.push(contact.join(" | "));
    } else {
        header.extend(contact);
    }
    let heading = rng.pick(&["Résumé", "RÉSUMÉ", "Curriculum Vitae", "RESUME", "Resume", "", ""]);
    if !heading.is_empty() {
        if rng.chance(0.5) {
            header.insert(0, heading.to_string());
        } else {
            header.push(heading.to_string());
        }
    }

    let label = |rng: &mut Rng, options: &[&str]| -> String {
        let label = rng.pick(options);
        label.to_string()
    };
    let upper_headings = rng.chance(0.5);
    let heading_case = |s: String| if upper_headings { s.to_uppercase() } else { s };

    // Experience: the most recent job first, each one more junior going back in time.
    let jobs = rng.range(2, 4) as usize;
    let mut experience = vec![heading_case(label(
        rng,
        &["Professional Experience", "Experience", "Work Experience", "Employment History", "Career History"],
    ))];
    let mut end_year = current_year;
    let mut level = current_level(years_working, field);
    let job_layout = rng.below(3);
    let bullet_mark = if rng.chance(0.8) { "-" } else { "*" };
    for job in 0..jobs {
        let trade = rng.pick(field.employers);
        let company = Company::in_trade(rng, trade);
        let start_year = end_year - rng.range(1, 5);
        let end = if job == 0 { "Present".to_string() } else { format!("{} {end_year}", month(rng)) };
        let dates = format!("{} {start_year} - {end}", month(rng));
        let title = field.titles[level];
        experience.push(match job_layout {
            0 => format!("{title}, {} - {}\n{dates}", company.name, company_city(rng)),
            1 => format!("{title} | {} | {dates}", company.short()),
            _ => format!("{dates}\nJob title: {title}, {}", company.name),
        });
        let bullets = if job == 0 { rng.range(3, 4) } else { rng.range(1, 3) } as usize;
        for bullet in rng.sample(field.bullets, bullets) {
            let money = format!("${}", grouped(rng.range(2, 900) * 5_000));
            let text = fill(
                bullet,
                &[
                    ("n", &rng.range(8, 45).to_string()),
                    ("m", &rng.range(3, 60).to_string()),
                    ("y", &rng.range(2, 8).to_string()),
                    ("money", &money),
                ],
            );
            experience.push(format!("{bullet_mark} {text}"));
        }
        end_year = start_year;
        level = level.saturating_sub(1);
    }

    let mut education = vec![heading_case(label(rng, &["Education", "Education and Training", "Academic Background"]))];
    let degrees = if rng.chance(0.3) { 2 } else { 1 };
    let mut graduated = end_year - rng.range(0, 2);
    for degree in rng.sample(field.degrees, degrees) {
        let university = rng.pick(UNIVERSITIES);
        education.push(match rng.below(2) {
            0 => format!("{degree}, {university}, {graduated}"),
            _ => format!("{university}\n{degree} ({} - {graduated})", graduated - rng.range(2, 4)),
        });
        if rng.chance(0.3) {
            education.push(
                rng.pick(&[
                    "Graduated with honours",
                    "GPA 3.7/4.0",
                    "Dean's List",
                    "Thesis on process automation",
                    "Scholarship recipient",
                ])
                .to_string(),
            );
        }
        graduated -= rng.range(3, 6);
    }

    let skill_count = rng.range(5, 9) as usize;
    let skills = rng.sample(field.skills, skill_count);
    let skills_section = format!(
        "{}\n{}",
        heading_case(label(rng, &["Skills", "Key Skills", "Core Competencies", "Technical Skills"])),
        skills.join(if rng.chance(0.5) { ", " } else { " | " })
    );

    let mut sections = Vec::new();
    if rng.chance(0.75) {
        let summary = fill(field.summary, &[("years", &years_working.to_string())]);
        let extra = rng.pick(&[
            "Known for clear communication and a calm approach under pressure.",
            "Looking for a role with more responsibility in a growing company.",
            "Comfortable working with international teams and tight deadlines.",
            "",
        ]);
        sections.push(format!(
            "{}\n{}",
            heading_case(label(rng, &["Summary", "Profile", "Professional Summary", "About Me", "Objective"])),
            format!("{summary} {extra}").trim_end()
        ));
    }
    let mut body = vec![experience.join("\n"), education.join("\n"), skills_section];
    match rng.below(4) {
        0 => body.swap(0, 1),
        1 => body.swap(1, 2),
        _ => {}
    }
    sections.extend(body);
    if rng.chance(0.4) {
        let certificates = rng.pick(&[
            "PMP (Project Management Professional)",
            "Certified Public Accountant (CPA)",
            "AWS Certified Solutions Architect",
            "Google Ads certification",
            "First Aid at Work",
            "Six Sigma Green Belt",
            "CIPS Level 4",
        ]);
        sections.push(format!(
            "{}\n{certificates}, {}",
            heading_case("Certifications".into()),
            current_year - rng.range(0, 6)
        ));
    }
    if rng.chance(0.4) {
        let languages = rng.sample(
            &[
                "English (native)",
                "Spanish (fluent)",
                "French (intermediate)",
                "German (basic)",
                "Mandarin (conversational)",
                "Portuguese (fluent)",
                "Danish (native)",
            ],
            2,
        );
        sections.push(format!("{}\n{}", heading_case("Languages".into()), languages.join(", ")));
    }
    if rng.chance(0.25) {
        sections.push(format!(
            "{}\n{}",
            heading_case(label(rng, &["Volunteer Work", "Interests", "Activities"])),
            rng.pick(&[
                "Treasurer of the local running club; marathon finisher.",
                "Volunteer tutor for adult literacy classes.",
                "Photography, hiking and playing the piano.",
                "Coach of a youth football team since 2018."
            ])
        ));
    }
    if rng.chance(0.35) {
        sections.push(
            rng.pick(&[
                "References available upon request.",
                "REFERENCES: Available on request",
                "References provided on request.",
            ])
            .to_string(),
        );
    }
    let mut out = vec![header.join("\n")];
    out.extend(sections);
    super::common::join_sections(out)
}

/// The title level someone with `years` of experience holds now: a step up every four years or so.
fn current_level(years: i64, field: &Field) -> usize {
    (years as usize / 4 + 1).min(field.titles.len() - 1)
}

fn company_city(rng: &mut Rng) -> &'static str {
    Address::random(rng).city
}

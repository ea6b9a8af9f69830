//! Contracts: parties, optional recitals, numbered clauses (term, payment, confidentiality, ...) and
//! signature blocks.

use super::common::{Address, Company, Currency, Date, Person, fill, job_title, title_case};
use super::rng::Rng;

/// A kind of agreement: its title, the two parties' defined names and the clause that states what it
/// is about (`{a}`/`{b}` are the parties, `{fee}`, `{start}`, `{months}` the deal).
struct Kind {
    titles: &'static [&'static str],
    a: &'static str,
    b: &'static str,
    /// Whether party B is a person rather than a company.
    b_is_person: bool,
    purpose: &'static [&'static str],
    payment: &'static [&'static str],
    /// What party A wants, for the recitals ("WHEREAS, the Client wishes to ...").
    recital: &'static str,
}

const KINDS: &[Kind] = &[
    Kind {
        titles: &["SERVICES AGREEMENT", "Master Services Agreement", "PROFESSIONAL SERVICES AGREEMENT"],
        a: "Client",
        b: "Provider",
        b_is_person: false,
        purpose: &[
            "Services. {b} shall provide the services described in each statement of work signed by the parties (the \"Services\") with the skill and care of a competent professional, and shall assign qualified personnel to perform them.",
            "Scope of Work. {b} agrees to perform the consulting, implementation and support services set out in Schedule A. Any change to the scope requires a written change order signed by both parties.",
        ],
        payment: &[
            "Fees and Payment. {a} shall pay {b} the fees set out in Schedule B, not to exceed {fee} without prior written approval. {b} shall invoice monthly in arrears and {a} shall pay each undisputed invoice within thirty (30) days of receipt.",
            "Compensation. In consideration of the Services, {a} shall pay {b} a fixed fee of {fee}, payable in equal monthly installments. Late payments bear interest at one percent (1%) per month.",
        ],
        recital: "obtain professional services from a qualified provider",
    },
    Kind {
        titles: &["CONSULTING AGREEMENT", "Independent Contractor Agreement", "CONSULTANCY AGREEMENT"],
        a: "Company",
        b: "Consultant",
        b_is_person: true,
        purpose: &[
            "Engagement. The Company engages the Consultant as an independent contractor to advise on {topic}. Nothing in this Agreement creates an employment, partnership or agency relationship between the parties.",
            "Duties. The Consultant shall devote such time as is reasonably necessary to advise the Company on {topic} and shall report to the Company's {officer}.",
        ],
        payment: &[
            "Compensation. The Company shall pay the Consultant an hourly rate of {rate}, up to a maximum of {fee} for the Term, within fifteen (15) days after receipt of a monthly invoice with a summary of hours worked.",
            "Fees. The Consultant shall receive a monthly retainer of {rate} and shall be reimbursed for reasonable pre-approved expenses. The Consultant is responsible for all taxes on such compensation.",
        ],
        recital: "benefit from the Consultant's expertise",
    },
    Kind {
        titles: &["MUTUAL NON-DISCLOSURE AGREEMENT", "Non-Disclosure Agreement", "CONFIDENTIALITY AGREEMENT"],
        a: "Disclosing Party",
        b: "Receiving Party",
        b_is_person: false,
        purpose: &[
            "Purpose. The parties wish to evaluate a possible business relationship concerning {topic} (the \"Purpose\") and, in doing so, may disclose Confidential Information to each other.",
            "Definition. \"Confidential Information\" means all non-public business, technical and financial information disclosed by the {a} to the {b}, whether orally or in writing, that is marked confidential or would reasonably be understood to be confidential.",
        ],
        payment: &[
            "Obligations. The {b} shall use the Confidential Information solely for the Purpose, shall not disclose it to any third party except to its employees and advisers who need to know it, and shall protect it with at least reasonable care.",
            "Exclusions. These obligations do not apply to information that is or becomes public through no fault of the {b}, was lawfully known to it before disclosure, or is required to be disclosed by law.",
        ],
        recital: "explore a business relationship while protecting its confidential information",
    },
    Kind {
        titles: &["COMMERCIAL LEASE AGREEMENT", "Lease Agreement", "OFFICE LEASE"],
        a: "Landlord",
        b: "Tenant",
        b_is_person: false,
        purpose: &[
            "Premises. The Landlord leases to the Tenant, and the Tenant leases from the Landlord, the premises located at {address} (the \"Premises\"), comprising approximately {area} square feet, for use as offices only.",
            "Use of Premises. The Tenant shall use the Premises at {address} solely for general office purposes and shall comply with all laws, building rules and insurance requirements.",
        ],
        payment: &[
            "Rent. The Tenant shall pay monthly rent of {rate}, in advance on the first day of each month, together with a security deposit of {fee} due on signing. Rent increases by three percent (3%) on each anniversary of the Commencement Date.",
            "Rent and Deposit. Base rent is {rate} per month. The Tenant shall also pay its share of operating expenses, utilities and property taxes. The Landlord holds a security deposit of {fee}.",
        ],
        recital: "let the Premises to a suitable tenant",
    },
    Kind {
        titles: &["EMPLOYMENT AGREEMENT", "Employment Contract", "EXECUTIVE EMPLOYMENT AGREEMENT"],
        a: "Employer",
        b: "Employee",
        b_is_person: true,
        purpose: &[
            "Position. The Employer employs the Employee as {position}, reporting to the {officer}. The Employee shall perform the duties customarily associated with that position and such other duties as the Employer may reasonably assign.",
            "Employment. The Employee's employment begins on {start} and is subject to a probationary period of three (3) months, during which either party may end it on one week's notice.",
        ],
        payment: &[
            "Salary and Benefits. The Employer shall pay the Employee an annual base salary of {fee}, payable in arrears on the Employer's regular payroll dates, less applicable withholdings. The Employee is entitled to twenty-five (25) days of paid vacation per year.",
            "Remuneration. The Employee's gross salary is {fee} per year. The Employee is eligible for an annual bonus of up to fifteen percent (15%) of base salary, based on performance objectives set by the Employer.",
        ],
        recital: "hire an experienced professional",
    },
    Kind {
        titles: &["SOFTWARE LICENSE AGREEMENT", "Software as a Service Agreement", "END USER LICENSE AGREEMENT"],
        a: "Licensor",
        b: "Licensee",
        b_is_person: false,
        purpose: &[
            "Grant of License. Subject to the terms of this Agreement, the Licensor grants the Licensee a non-exclusive, non-transferable license to use the Software for its internal business purposes, for up to {users} named users.",
            "Restrictions. The Licensee shall not copy, modify, reverse engineer, sublicense or resell the Software, nor use it to provide services to third parties, except as expressly permitted in this Agreement.",
        ],
        payment: &[
            "License Fees. The Licensee shall pay an annual subscription fee of {fee}, invoiced in advance. Fees are non-refundable except as stated in Section {n} (Warranties).",
            "Fees and Taxes. The Licensee shall pay the fees stated in the Order Form ({fee} per year) within thirty (30) days of the invoice date, plus any applicable sales, use or value added taxes.",
        ],
        recital: "license the Software to the Licensee",
    },
    Kind {
        titles: &["SUPPLY AGREEMENT", "Purchase Agreement", "DISTRIBUTION AGREEMENT"],
        a: "Buyer",
        b: "Supplier",
        b_is_person: false,
        purpose: &[
            "Supply of Products. The Supplier shall sell and deliver to the Buyer the products listed in Exhibit 1 (the \"Products\") in the quantities stated in purchase orders issued by the Buyer from time to time.",
            "Delivery. The Supplier shall deliver the Products DAP to the Buyer's facility at {address} within {days} days of each purchase order. Title and risk pass to the Buyer on delivery.",
        ],
        payment: &[
            "Prices and Payment. Prices are set out in Exhibit 1 and are fixed for the first twelve (12) months. The Buyer commits to a minimum annual purchase volume of {fee} and shall pay each invoice within forty-five (45) days.",
            "Payment Terms. The Supplier shall invoice each shipment separately. The Buyer shall pay within thirty (30) days of receipt of a correct invoice, and may withhold payment for Products that fail inspection.",
        ],
        recital: "secure a reliable supply of the Products",
    },
];

/// General clauses most contracts carry, in one of two wordings each.
const GENERAL: &[&[&str]] = &[
    &[
        "Term. This Agreement commences on {start} (the \"Effective Date\") and continues for {months} months, after which it renews automatically for successive one-year terms unless either party gives notice of non-renewal at least sixty (60) days before the end of the then-current term.",
        "Term. The term of this Agreement is {months} months from the Effective Date, {start}, unless terminated earlier in accordance with its provisions.",
    ],
    &[
        "Termination. Either party may terminate this Agreement for convenience on {days} days' written notice, or immediately by written notice if the other party materially breaches this Agreement and fails to cure the breach within fifteen (15) days.",
        "Termination for Cause. A party may terminate this Agreement if the other party becomes insolvent, makes an assignment for the benefit of creditors, or commits a material breach that remains uncured thirty (30) days after written notice.",
    ],
    &[
        "Confidentiality. Each party shall keep confidential all information received from the other party under this Agreement and shall not use it except to perform its obligations. This obligation survives termination for five (5) years.",
        "Confidential Information. Neither party shall disclose the terms of this Agreement or the other party's confidential information to any third party without prior written consent, except as required by law.",
    ],
    &[
        "Indemnification. Each party shall indemnify, defend and hold harmless the other party and its officers, directors and employees from any third-party claims, damages and expenses arising from its breach of this Agreement or its negligence.",
        "Indemnity. The {b} shall indemnify the {a} against all losses, liabilities and costs (including reasonable legal fees) arising out of any claim that the {b}'s performance infringes the rights of a third party.",
    ],
    &[
        "Limitation of Liability. Neither party shall be liable for any indirect, incidental, special or consequential damages. Each party's total liability under this Agreement shall not exceed the amounts paid or payable in the twelve (12) months preceding the claim.",
        "Liability Cap. Except for breaches of confidentiality, the aggregate liability of either party shall be limited to {fee}.",
    ],
    &[
        "Governing Law. This Agreement is governed by the laws of {law}, without regard to its conflict of laws rules. The courts of {law} have exclusive jurisdiction over any dispute arising under it.",
        "Dispute Resolution. The parties shall first attempt to resolve any dispute through good-faith negotiation. Disputes not resolved within thirty (30) days shall be settled by binding arbitration seated in {city} under the laws of {law}.",
    ],
    &[
        "Force Majeure. Neither party is liable for failure or delay in performance caused by events beyond its reasonable control, including fire, flood, epidemic, war, strikes or failures of public utilities, provided it notifies the other party promptly.",
        "Force Majeure. A party affected by an event beyond its reasonable control shall be excused from performance for the duration of the event. If the event lasts more than ninety (90) days, either party may terminate this Agreement.",
    ],
    &[
        "Intellectual Property. All deliverables created by the {b} under this Agreement shall be the exclusive property of the {a} upon full payment. The {b} retains ownership of its pre-existing tools and know-how.",
        "Ownership. Each party retains all rights, title and interest in its own intellectual property. No license is granted except as expressly stated in this Agreement.",
    ],
    &[
        "Notices. All notices under this Agreement must be in writing and delivered by hand, courier or e-mail to the addresses stated above, and are effective upon receipt.",
        "Notices. Notices shall be sent to the {a} at {address} and to the {b} at the address set out above, or to such other address as a party designates in writing.",
    ],
    &[
        "Assignment. Neither party may assign or transfer this Agreement without the prior written consent of the other party, except to a successor in a merger or sale of substantially all of its assets.",
        "Assignment and Subcontracting. The {b} shall not assign this Agreement or subcontract any of its obligations without the {a}'s prior written consent, which shall not be unreasonably withheld.",
    ],
    &[
        "Non-Solicitation. During the term and for twelve (12) months thereafter, neither party shall solicit for employment any employee of the other party who was involved in the performance of this Agreement.",
        "Non-Solicitation. The {b} shall not, for one (1) year after termination, solicit any customer or employee of the {a} with whom it had material contact.",
    ],
    &[
        "Warranties. Each party represents and warrants that it has full power and authority to enter into this Agreement and that doing so does not conflict with any other agreement to which it is a party.",
        "Warranty. The {b} warrants that its performance will conform to the specifications for ninety (90) days after acceptance and will promptly remedy any non-conformity reported in writing.",
    ],
    &[
        "Insurance. The {b} shall maintain general liability insurance with coverage of not less than {fee} per occurrence and shall provide certificates of insurance on request.",
        "Insurance. Each party shall maintain adequate insurance with reputable insurers to cover its obligations under this Agreement.",
    ],
];

const ENTIRE: &[&str] = &[
    "Entire Agreement. This Agreement, together with its schedules, constitutes the entire agreement between the parties and supersedes all prior agreements and understandings. It may be amended only in writing signed by both parties.",
    "Entire Agreement; Amendments. This Agreement supersedes all prior discussions. No waiver or amendment is effective unless in writing and signed by authorised representatives of both parties. If any provision is held invalid, the remainder remains in force.",
];

const TOPICS: &[&str] = &[
    "supply chain optimization",
    "a customer data platform",
    "the expansion of its retail network",
    "financial reporting and controls",
    "a joint research project",
    "the migration of its billing system",
    "brand strategy and marketing",
    "regulatory compliance",
    "a proposed acquisition",
];

const LAWS: &[(&str, &str)] = &[
    ("the State of Delaware", "Wilmington"),
    ("the State of New York", "New York"),
    ("the State of California", "San Francisco"),
    ("England and Wales", "London"),
    ("the Province of Ontario", "Toronto"),
    ("Ireland", "Dublin"),
    ("the Federal Republic of Germany", "Frankfurt"),
    ("the State of Texas", "Austin"),
];

pub(crate) fn generate(rng: &mut Rng) -> String {
    let kind = rng.pick_ref(KINDS);
    let title = rng.pick(kind.titles);
    let party_a = Company::random(rng);
    let address_a = Address::random(rng);
    let person_b = Person::random(rng);
    let party_b = if kind.b_is_person { person_b.full() } else { Company::random(rng).name };
    let address_b = Address::random(rng);
    let currency = Currency::random(rng);
    let effective = Date::random(rng);
    let start = effective.plus_days(rng.pick(&[0, 0, 1, 14, 30]));
    let style = rng.pick(&[0, 0, 1, 1, 5]);
    let (law, city) = rng.pick(LAWS);
    let fee = currency.fmt(rng.range(50, 2_500) * 10_000);
    let rate = currency.fmt(rng.range(8, 300) * 25_00);
    let position = rng.pick(&[
        "Senior Accountant",
        "Marketing Manager",
        "Software Engineer",
        "Operations Director",
        "Sales Representative",
        "Project Coordinator",
    ]);

    let entity = rng.pick(&[
        "a Delaware corporation",
        "a limited liability company",
        "a company registered in England and Wales",
        "a corporation",
        "a private limited company",
    ]);
    let party_b_text = if kind.b_is_person {
        format!("{party_b}, an individual residing at {}", address_b.one_line())
    } else {
        format!(
            "{party_b}, {}, with offices at {}",
            rng.pick(&["a corporation", "a limited liability company", "a GmbH", "a partnership"]),
            address_b.one_line()
        )
    };
    let preamble = match rng.below(3) {
        0 => format!(
            "This {} (the \"Agreement\") is entered into as of {} by and between {}, {entity} with its principal place of business at {} (the \"{}\"), and {party_b_text} (the \"{}\").",
            title_case(title),
            effective.format(style),
            party_a.name,
            address_a.one_line(),
            kind.a,
            kind.b
        ),
        1 => format!(
            "THIS AGREEMENT is made on {}\n\nBETWEEN:\n(1) {}, {entity}, of {} (\"{}\"); and\n(2) {party_b_text} (\"{}\").",
            effective.format(style),
            party_a.name,
            address_a.one_line(),
            kind.a,
            kind.b
        ),
        _ => format!(
            "Parties\n{}: {}, {}\n{}: {party_b_text}\nEffective Date: {}",
            kind.a,
            party_a.name,
            address_a.one_line(),
            kind.b,
            effective.format(style)
        ),
    };

    let mut clauses: Vec<String> = Vec::new();
    let purposes = rng.range(1, 2) as usize;
    clauses.extend(rng.sample(kind.purpose, purposes).into_iter().map(str::to_string));
    clauses.push(rng.pick(kind.payment).to_string());
    let general_count = rng.range(3, 6) as usize;
    let mut general: Vec<String> =
        rng.sample(GENERAL, general_count).into_iter().map(|wordings| rng.pick(wordings).to_string()).collect();
    // Term usually comes early, as drafters put it; the rest keeps the shuffled order.
    if let Some(at) = general.iter().position(|c| c.starts_with("Term.")) {
        let term = general.remove(at);
        clauses.insert(rng.below(2), term);
    }
    if rng.chance(0.8) {
        general.push(rng.pick(ENTIRE).to_string());
    }
    let first_general = clauses.len();
    clauses.extend(general);
    let with_recitals = rng.chance(0.5);

    let values = [
        ("a", kind.a),
        ("b", kind.b),
        ("fee", fee.as_str()),
        ("rate", rate.as_str()),
        ("start", &start.format(style)),
        ("months", rng.pick(&["six (6)", "twelve (12)", "twenty-four (24)", "thirty-six (36)"])),
        ("days", rng.pick(&["thirty (30)", "sixty (60)", "ninety (90)", "fourteen (14)"])),
        ("topic", rng.pick(TOPICS)),
        ("officer", job_title(rng)),
        ("position", position),
        ("address", &address_a.one_line()),
        ("area", &(rng.range(8, 120) * 100).to_string()),
        ("users", &(rng.range(1, 40) * 25).to_string()),
        ("law", law),
        ("city", city),
        ("n", &rng.range(6, 12).to_string()),
    ];
    let numbering = rng.below(3);
    let number = |clauses: &[String]| -> String {
        clauses
            .iter()
            .enumerate()
            .map(|(i, clause)| {
                let text = fill(clause, &values);
                let (heading, body) = text.split_once(". ").unwrap_or(("", &text));
                match numbering {
                    0 => format!("{}. {}. {body}", i + 1, heading),
                    1 => format!("{}. {}\n{body}", i + 1, heading.to_uppercase()),
                    _ => format!("Section {} - {heading}\n{body}", i + 1),
                }
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    };

    let opening = if with_recitals {
        format!(
            "RECITALS\nWHEREAS, the {} wishes to {}; and\nWHEREAS, the {} is willing to do so on the terms set out below;\nNOW, THEREFORE, in consideration of the mutual covenants contained herein, the parties agree as follows:",
            kind.a, kind.recital, kind.b
        )
    } else {
        "The parties agree as follows:".to_string()
    };

    let signer_a = Person::random(rng);
    let signer_b = if kind.b_is_person { person_b.clone() } else { Person::random(rng) };
    let mut signatures = vec![
        rng.pick(&[
            "IN WITNESS WHEREOF, the parties have executed this Agreement as of the Effective Date.",
            "Signed by the authorised representatives of the parties on the dates below.",
            "AGREED AND ACCEPTED:",
        ])
        .to_string(),
    ];
    for (role, name, signer, company) in
        [(kind.a, party_a.name.as_str(), &signer_a, true), (kind.b, party_b.as_str(), &signer_b, !kind.b_is_person)]
    {
        let mut block = vec![format!("{}: {name}", role.to_uppercase())];
        // Conformed signatures ("/s/"), as on contracts signed electronically.
        block.push(format!("By: /s/ {}", signer.full()));
        block.push(format!("Name: {}", signer.full()));
        if company {
            block.push(format!("Title: {}", job_title(rng)));
        }
        block.push(format!("Date: {}", effective.format(style)));
        signatures.push(block.join("\n"));
    }
    let signatures = signatures.join("\n\n");

    let assemble = |clauses: &[String]| {
        super::common::join_sections(vec![
            title.to_string(),
            preamble.clone(),
            opening.clone(),
            number(clauses),
            signatures.clone(),
        ])
    };
    // Long clause selections are trimmed to keep the document under 400 words, as the corpus promises:
    // general clauses go first, from the middle, so the purpose, payment and closing clauses stay.
    let mut document = assemble(&clauses);
    while document.split_whitespace().count() > 390 && clauses.len() - first_general > 1 {
        clauses.remove(first_general + (clauses.len() - first_general - 1) / 2);
        document = assemble(&clauses);
    }
    document
}

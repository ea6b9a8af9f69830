//! Business and personal letters: addresses, date, salutation, body paragraphs on one of many topics,
//! sign-off and optional enclosures or postscript.

use super::common::{Address, Company, Currency, Date, Person, fill, fill_pattern, job_title, join_sections};
use super::rng::Rng;

/// A topic: a subject line and paragraphs, each paragraph a choice of wordings. Slots: `{company}`
/// (the recipient's), `{us}` (the sender's company), `{future}`, `{amount}`, `{number}`, `{name}`
/// (a third person), `{role}`, `{city}`, `{weeks}`.
struct Topic {
    subject: &'static str,
    paragraphs: &'static [&'static [&'static str]],
}

const TOPICS: &[Topic] = &[
    Topic {
        subject: "Disputed invoice {number}",
        paragraphs: &[
            &[
                "I am writing about invoice {number} dated {past}, which we received last week for {amount}.",
                "We have received your invoice {number} of {past} for {amount} and would like to raise a concern before payment.",
            ],
            &[
                "According to our records, the delivery was incomplete and two of the items listed were never received. Our purchase order covered only the first phase of the work.",
                "The hourly rate shown is higher than the rate agreed in our contract, and several hours appear to have been billed twice. Neither party approved these extra hours in writing.",
            ],
            &[
                "Could you please review the charges and send us a corrected invoice? We will pay the undisputed portion in the meantime.",
                "I shall be grateful if you could look into this and issue a credit note for the difference, so that the account can be settled as agreed between our two parties.",
            ],
        ],
    },
    Topic {
        subject: "Application for the position of {role}",
        paragraphs: &[
            &[
                "I am writing to apply for the {role} position advertised on your website. With several years of experience in similar roles, I believe I would be a strong addition to your team at {company}.",
                "Please accept this letter as my application for the role of {role}. I have followed the work of {company} for some time and admire its reputation.",
            ],
            &[
                "In my current position I manage a small team, prepare monthly reports for senior management and have led two successful process improvement projects.",
                "My background includes project coordination, budgeting and customer service, and I enjoy solving problems with colleagues across departments.",
            ],
            &[
                "I have enclosed my resume for your consideration and would welcome the opportunity to discuss how I could contribute. I am available for an interview at your convenience.",
                "Thank you for considering my application. I look forward to hearing from you and would be happy to provide references.",
            ],
        ],
    },
    Topic {
        subject: "Letter of recommendation for {name}",
        paragraphs: &[
            &[
                "It is my pleasure to recommend {name}, who worked with me at {us} for four years as a {role}.",
                "I have known {name} since {past}, when they joined my department, and I am glad to support their application.",
            ],
            &[
                "During that time {name} consistently exceeded expectations, earned the trust of clients and colleagues, and took on responsibilities well beyond the job description.",
                "{name} is reliable, thoughtful and quick to learn. They led our move to a new reporting system and trained the rest of the team patiently.",
            ],
            &[
                "I recommend {name} without reservation. Please do not hesitate to contact me if you need any further information.",
                "Any organisation would be fortunate to have {name}. I am happy to answer questions by phone or e-mail.",
            ],
        ],
    },
    Topic {
        subject: "Complaint regarding order {number}",
        paragraphs: &[
            &[
                "I am writing to express my disappointment with order {number}, which arrived on {past}.",
                "On {past} I purchased a product from your store in {city}, and I regret to say that I am not satisfied with it.",
            ],
            &[
                "The package was damaged on arrival and the item does not work as described. I contacted customer service twice but have not received a reply.",
                "The product stopped working after only a week of normal use, and the replacement I was promised has not been sent.",
            ],
            &[
                "I would like a full refund of {amount} or a replacement within fourteen days. I have kept the receipt and the original packaging.",
                "Please let me know how you intend to resolve this matter. If I do not hear from you within {weeks} weeks I will have to take further action.",
            ],
        ],
    },
    Topic {
        subject: "Thank you",
        paragraphs: &[
            &[
                "I wanted to thank you personally for your hospitality during our visit to {city} last week.",
                "Thank you very much for meeting with me on {past} and for taking the time to show me around.",
            ],
            &[
                "The discussions with your team were very useful, and I came away with a much better understanding of how {company} works.",
                "Your advice on the new project was especially helpful, and my colleagues at {us} have already started to act on it.",
            ],
            &[
                "I hope we will have the opportunity to work together again soon. Please give my regards to everyone in the office.",
                "If I can ever return the favour, please let me know.",
            ],
        ],
    },
    Topic {
        subject: "Notice of change of address",
        paragraphs: &[
            &[
                "Please note that as of {future}, {us} will move to new premises. Our new address is shown at the top of this letter.",
                "I am writing to let you know that our office is relocating on {future}.",
            ],
            &[
                "Our telephone numbers and e-mail addresses will stay the same. Please update your records and send all future correspondence, including invoices and statements, to the new address.",
                "The move will not interrupt our services, although deliveries during the week of the move may take a day longer than usual.",
            ],
            &[
                "Thank you for your understanding. We look forward to welcoming you at our new office.",
                "We apologise for any inconvenience and thank you for your continued support.",
            ],
        ],
    },
    Topic {
        subject: "Resignation",
        paragraphs: &[
            &[
                "Please accept this letter as formal notice of my resignation from my position as {role}, effective {weeks} weeks from today.",
                "I am writing to inform you that I have decided to resign from my role as {role} at {company}.",
            ],
            &[
                "I have accepted a position that will allow me to develop new skills, but this was not an easy decision. I am grateful for the support and opportunities you have given me.",
                "I have enjoyed working with the team and have learned a great deal during my time here.",
            ],
            &[
                "During my notice period I will do everything I can to hand over my work smoothly, including training my replacement.",
                "Please let me know how I can help with the transition. I wish you and the company every success.",
            ],
        ],
    },
    Topic {
        subject: "Request for information",
        paragraphs: &[
            &[
                "We are planning to expand our operations in {city} and would like to learn more about the services offered by {company}.",
                "I am writing on behalf of {us} to request information about your products and pricing.",
            ],
            &[
                "Our questions are as follows: could you send us a price list, your standard delivery times and details of any discounts for orders above {amount}?",
                "We would also like to know whether you can provide references from customers of a similar size, and what support is included.",
            ],
            &[
                "We hope to make a decision by {future}. Thank you in advance for your help.",
                "A brochure or a short call with one of your representatives would be most welcome.",
            ],
        ],
    },
    Topic {
        subject: "Apology for the delay",
        paragraphs: &[
            &[
                "Please accept our sincere apologies for the delay in delivering your order {number}.",
                "I am sorry to inform you that the shipment scheduled for {past} has been delayed.",
            ],
            &[
                "Due to a problem with one of our suppliers, the goods will now be dispatched in about {weeks} weeks. We are doing everything we can to shorten this time.",
                "An unexpected fault in our warehouse system affected several deliveries this month, including yours.",
            ],
            &[
                "As a gesture of goodwill we will refund the delivery charge and apply a discount of ten percent to your next order.",
                "We value your business and will keep you informed of progress. Please contact me directly if you have any concerns.",
            ],
        ],
    },
    Topic {
        subject: "Invitation to our annual event",
        paragraphs: &[
            &[
                "On behalf of {us}, I am delighted to invite you to our annual customer evening on {future} in {city}.",
                "We would be honoured if you could join us for the opening of our new office in {city} on {future}.",
            ],
            &[
                "We shall present our plans for the coming year, followed by dinner and music.",
                "Guests will have the chance to meet our team, tour the building and hear from several of our partners.",
            ],
            &[
                "Please let us know by {future} whether you will be able to attend. We very much hope to see you there.",
                "Kindly reply to this letter or call my office to confirm your attendance.",
            ],
        ],
    },
    Topic {
        subject: "Renewal of your lease",
        paragraphs: &[
            &[
                "Your lease for the premises in {city} expires on {future}, and we are pleased to offer you a renewal.",
                "As your current tenancy agreement comes to an end on {future}, I am writing to set out the terms for renewal.",
            ],
            &[
                "The new monthly rent will be {amount}, reflecting a modest increase in line with the market. All other terms remain unchanged.",
                "We propose a further term of two years at a rent of {amount} per month, with the same deposit and notice periods.",
            ],
            &[
                "Please sign and return the enclosed copy if you wish to renew. I am happy to meet to discuss any questions.",
                "If you do not intend to renew, please give us written notice at least {weeks} weeks before the end of the lease.",
            ],
        ],
    },
    Topic {
        subject: "Follow-up to our meeting",
        paragraphs: &[
            &[
                "Thank you for meeting with us on {past} to discuss the proposed partnership between {us} and {company}.",
                "Further to our conversation last week, the points on which the parties agree are as follows.",
            ],
            &[
                "We agreed to run a three-month pilot starting next quarter, with a budget of {amount}, and to review the results together at the end.",
                "Our team will prepare a draft proposal and timeline, and your colleagues will share the data we need to estimate the costs.",
            ],
            &[
                "I will send a draft agreement within {weeks} weeks. Please let me know if I have missed anything.",
                "I am confident that both parties will benefit, and I look forward to a successful collaboration.",
            ],
        ],
    },
];

pub(crate) fn generate(rng: &mut Rng) -> String {
    let topic = rng.pick_ref(TOPICS);
    let sender = Person::random(rng);
    let sender_company = Company::random(rng);
    let sender_address = Address::random(rng);
    let recipient = Person::random(rng);
    let recipient_company = Company::random(rng);
    let recipient_address = Address::random(rng);
    let third = Person::random(rng);
    let currency = Currency::random(rng);
    let style = rng.pick(&[0, 0, 1, 1, 5]);
    let earlier = Date::random(rng);
    let date = earlier.plus_days(rng.range(10, 60));
    let personal = rng.chance(0.3);
    let number_pattern = rng.pick(&["INV-####", "#######", "@@-#####", "####/##"]);

    let values = [
        ("company", recipient_company.short()),
        ("us", sender_company.short()),
        ("past", earlier.format(style)),
        ("future", date.plus_days(rng.range(14, 90)).format(style)),
        ("amount", currency.fmt(rng.range(50, 40_000) * 100)),
        ("number", fill_pattern(rng, number_pattern)),
        ("name", third.full()),
        (
            "role",
            rng.pick(&[
                "Office Manager",
                "Senior Accountant",
                "Project Manager",
                "Marketing Coordinator",
                "Software Engineer",
                "Sales Representative",
                "Logistics Coordinator",
            ])
            .to_string(),
        ),
        ("city", sender_address.city.to_string()),
        ("weeks", rng.pick(&["two", "three", "four", "six"]).to_string()),
    ];
    let values: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let mut sections = Vec::new();
    if rng.chance(0.7) {
        let mut block = Vec::new();
        if !personal {
            block.push(sender_company.name.clone());
        } else {
            block.push(sender.full());
        }
        block.extend(sender_address.lines());
        if rng.chance(0.4) {
            block.push(sender.email(rng, &sender_company.domain));
        }
        sections.push(block.join("\n"));
    }
    sections.push(date.format(style));
    let honorific = recipient.honorific(rng);
    let mut to = vec![if rng.chance(0.6) { format!("{honorific} {}", recipient.full()) } else { recipient.full() }];
    if rng.chance(0.6) {
        to.push(job_title(rng).to_string());
    }
    to.push(recipient_company.name.clone());
    to.extend(recipient_address.lines());
    sections.push(to.join("\n"));
    if rng.chance(0.55) {
        sections.push(format!(
            "{} {}",
            rng.pick(&["Re:", "RE:", "Subject:", "Regarding:"]),
            fill(topic.subject, &values)
        ));
    }
    let salutation = match rng.below(6) {
        0 => format!("Dear {},", recipient.first),
        1 => "Dear Sir or Madam,".to_string(),
        2 if topic.subject.starts_with("Application") => "Dear Hiring Manager,".to_string(),
        3 => "To whom it may concern,".to_string(),
        _ => format!("Dear {honorific} {},", recipient.last),
    };
    sections.push(salutation);

    for choices in topic.paragraphs {
        let mut paragraph = fill(rng.pick(choices), &values);
        if rng.chance(0.3) {
            paragraph.push(' ');
            paragraph.push_str(rng.pick(&[
                "I hope this finds you well.",
                "I appreciate your attention to this matter.",
                "Please feel free to call me if that is easier.",
                "Our team is of course ready to help.",
                "I have copied my colleague on this letter for information.",
            ]));
        }
        sections.push(paragraph);
    }

    sections.push(
        rng.pick(&[
            "Please do not hesitate to contact me by phone or e-mail if you have any questions.",
            "Thank you for your time and attention. I look forward to your reply.",
            "I would appreciate a written reply at your earliest convenience.",
            "Should you need any further details, my colleagues and I will be glad to help.",
        ])
        .to_string(),
    );
    let closing = rng.pick(&[
        "Sincerely,",
        "Yours sincerely,",
        "Kind regards,",
        "Best regards,",
        "Yours faithfully,",
        "With best wishes,",
        "Respectfully,",
    ]);
    let mut signature = vec![closing.to_string(), String::new(), sender.full()];
    if !personal {
        signature.push(job_title(rng).to_string());
        signature.push(sender_company.name.clone());
        if rng.chance(0.4) {
            signature.push(format!("Tel. {}", super::common::phone(rng)));
        }
    }
    sections.push(signature.join("\n"));
    if rng.chance(0.25) {
        sections.push(format!(
            "Enclosure{}: {}",
            if rng.chance(0.3) { "s" } else { "" },
            rng.pick(&["copy of invoice", "resume", "signed agreement", "brochure", "receipt", "report"])
        ));
    }
    if rng.chance(0.2) {
        sections.push(format!("cc: {}", Person::random(rng).full()));
    }
    if rng.chance(0.15) {
        sections.push(format!(
            "P.S. {}",
            rng.pick(&[
                "Congratulations on the recent award!",
                "I will be in town next month and would love to catch up.",
                "Please remember me to your family."
            ])
        ));
    }
    join_sections(sections)
}

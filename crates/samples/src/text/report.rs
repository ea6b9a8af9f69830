//! Reports: a title block, then executive summary, background, method, findings with figures and
//! tables, recommendations and conclusion, with optional sections and varying order.

use super::common::{Company, Currency, Date, Person, fill, join_sections};
use super::rng::Rng;

/// A kind of report. Slots: `{company}`, `{period}`, `{pct}`/`{pct2}` (percentages), `{amount}`,
/// `{n}`/`{n2}` (counts), `{weeks}`, `{days}`, `{site}`, `{dept}`.
struct Kind {
    titles: &'static [&'static str],
    summary: &'static [&'static str],
    background: &'static [&'static str],
    method: &'static [&'static str],
    findings: &'static [&'static str],
    table: (&'static str, &'static [&'static str], &'static str),
    recommendations: &'static [&'static str],
}

const KINDS: &[Kind] = &[
    Kind {
        titles: &[
            "Quarterly Sales Report - {period}",
            "Sales Performance Review {period}",
            "{company} Revenue Report, {period}",
        ],
        summary: &[
            "Revenue for {period} reached {amount}, an increase of {pct}% over the same period last year, driven mainly by new enterprise customers.",
            "Sales fell short of target in {period}: total bookings were {amount}, {pct}% below plan, although margins improved.",
        ],
        background: &[
            "This report reviews sales performance by region and product line for {period} and compares it with the annual plan approved by the board.",
        ],
        method: &[
            "Figures are taken from the CRM and the general ledger as of the last day of the quarter. Regional totals exclude intercompany sales.",
        ],
        findings: &[
            "The North region grew fastest, with sales up {pct}% year over year.",
            "Average deal size rose to {amount} while the number of closed deals fell by {pct2}%.",
            "Online orders now account for {pct}% of total revenue, compared with {pct2}% a year ago.",
            "Customer churn remained stable at {pct2}% per quarter.",
            "The new product line contributed {amount} in its first full quarter.",
            "Discounting increased in the final month, reducing gross margin by {pct2} percentage points.",
        ],
        table: ("Table 1: Revenue by region", &["North", "South", "East", "West", "International"], "amount"),
        recommendations: &[
            "Increase investment in the North region sales team.",
            "Review discount approval limits for account managers.",
            "Expand the online channel with a dedicated marketing budget.",
            "Introduce quarterly pricing reviews for the top {n2} customers.",
        ],
    },
    Kind {
        titles: &[
            "Incident Report: Service Outage on {date}",
            "Post-Incident Review - {site}",
            "Security Incident Report {code}",
        ],
        summary: &[
            "On {date} the customer portal was unavailable for {n} minutes. Approximately {pct}% of users were affected. The root cause was an expired certificate on a load balancer.",
            "A misconfigured firewall rule at {site} exposed an internal service for {n} hours. No evidence of data loss was found.",
        ],
        background: &[
            "The affected systems support order entry and invoicing for all regions. The incident was detected by automated monitoring and escalated to the on-call engineer.",
        ],
        method: &[
            "This review is based on system logs, monitoring data and interviews with the {n} staff involved, following our blameless post-incident process.",
        ],
        findings: &[
            "Detection took {n2} minutes because the alert threshold was set too high.",
            "A third-party monitoring service reported the problem before our own alerts did.",
            "The runbook for certificate renewal was out of date.",
            "Roughly {n} customer orders failed and had to be re-entered manually.",
            "Communication to customers began {n2} minutes after the start of the outage.",
            "Error rates returned to normal levels within {pct2} minutes of the fix.",
            "The estimated cost of the incident, including service credits, is {amount}.",
        ],
        table: (
            "Table 1: Timeline of the incident (minutes from start)",
            &["Detection", "Escalation", "Diagnosis", "Fix deployed", "Full recovery"],
            "minutes",
        ),
        recommendations: &[
            "Automate certificate renewal and add expiry alerts.",
            "Lower alert thresholds and test them quarterly.",
            "Update the incident communication template.",
            "Run a failover exercise within {weeks} weeks.",
        ],
    },
    Kind {
        titles: &[
            "Customer Satisfaction Survey Results {period}",
            "Customer Experience Report - {period}",
            "Net Promoter Score Analysis",
        ],
        summary: &[
            "Overall customer satisfaction rose to {pct}% in {period}. The Net Promoter Score was {n}, up from the previous survey.",
            "The survey shows that most customers are satisfied with product quality but {pct2}% are unhappy with response times.",
        ],
        background: &[
            "{company} surveys its customers twice a year to measure satisfaction with products, delivery and support.",
        ],
        method: &[
            "An online questionnaire was sent to {n} hundred customers; the response rate was {pct2}%. Scores use a five-point scale.",
        ],
        findings: &[
            "{pct}% of respondents rated product quality as good or excellent.",
            "Satisfaction with delivery times dropped by {pct2} points compared with the last survey.",
            "Customers who contacted support more than twice were much less likely to recommend us.",
            "The most frequent complaint concerned billing errors on invoices.",
            "Respondents under 35 preferred chat support to telephone support.",
        ],
        table: (
            "Table 2: Satisfaction score by channel (%)",
            &["Telephone", "E-mail", "Chat", "In store", "Self-service"],
            "percent",
        ),
        recommendations: &[
            "Reduce first response time for support tickets to under four hours.",
            "Investigate the causes of billing errors with the finance team.",
            "Extend chat support hours to evenings and weekends.",
            "Repeat the survey in six months to measure progress.",
        ],
    },
    Kind {
        titles: &[
            "Project Status Report - {project}",
            "Monthly Progress Report: {project}",
            "{project} Steering Committee Update",
        ],
        summary: &[
            "The {project} project is {pct}% complete and on schedule. Spending to date is {amount}, within the approved budget.",
            "The {project} project is behind schedule by {n} weeks because of delays in vendor deliveries; the overall status is amber.",
        ],
        background: &[
            "The project was approved in {period} to replace the legacy system used by the {dept} department, with a total budget of {amount}.",
        ],
        method: &[
            "Progress is measured against the baseline plan; budget figures come from the finance system and include committed costs.",
        ],
        findings: &[
            "Milestone 3 (data migration) was completed on time.",
            "User acceptance testing has started with {n} test cases, of which {pct}% have passed.",
            "Two key risks remain open: vendor capacity and staff availability during the holiday period.",
            "Forecast cost at completion is {amount}, {pct2}% above the original estimate.",
            "Training for {n2} end users is scheduled for next month.",
        ],
        table: (
            "Table 1: Budget versus actual by phase",
            &["Analysis", "Design", "Build", "Testing", "Deployment"],
            "amount",
        ),
        recommendations: &[
            "Approve a change request for additional testing resources.",
            "Escalate the vendor delays to the contract owner.",
            "Move the go-live date by {weeks} weeks if testing is not complete.",
        ],
    },
    Kind {
        titles: &[
            "Internal Audit Report: {dept}",
            "Audit of Accounts Payable Controls",
            "Annual Compliance Review {period}",
        ],
        summary: &[
            "The audit of the {dept} department found that controls are generally effective, with {n} medium-risk findings that require action.",
            "Our review identified weaknesses in the approval of supplier invoices; payments of {amount} were made without a matching purchase order.",
        ],
        background: &[
            "This audit was part of the approved internal audit plan for {period} and covered the period from January to June.",
        ],
        method: &[
            "We tested a sample of {n} transactions, reviewed policies and interviewed key staff. Findings are rated high, medium or low.",
        ],
        findings: &[
            "{pct}% of sampled invoices were approved by an authorised signatory.",
            "Duplicate vendor records were found for {n2} suppliers.",
            "Segregation of duties between ordering and payment was not enforced in one business unit.",
            "Expense claims above the policy limit were approved without justification in {pct2}% of cases.",
            "Access to the payment system was not removed promptly for staff who had left.",
            "Payments to third parties were not always supported by a signed agreement.",
        ],
        table: ("Table 1: Findings by risk rating", &["High", "Medium", "Low", "Observations"], "count"),
        recommendations: &[
            "Enforce three-way matching of purchase order, receipt and invoice.",
            "Clean up the vendor master file and review it quarterly.",
            "Introduce a monthly review of user access to finance systems.",
            "Provide training on the expense policy to all managers.",
        ],
    },
    Kind {
        titles: &[
            "Market Analysis: {market}",
            "{market} Market Overview {period}",
            "Competitive Landscape Report - {market}",
        ],
        summary: &[
            "The {market} market grew by {pct}% in {period} and is expected to reach {amount} within three years.",
            "Competition in the {market} market is intensifying; the three largest players now hold {pct}% of the market.",
        ],
        background: &[
            "{company} is considering entering the {market} market and commissioned this analysis to present its size, growth and competitors.",
        ],
        method: &[
            "The analysis combines public company filings, industry databases and {n} interviews with customers and distributors.",
        ],
        findings: &[
            "Demand is strongest among mid-sized businesses, which account for {pct}% of spending.",
            "Prices have fallen by {pct2}% over two years as new entrants compete on cost.",
            "Customers value reliability and local support more than price.",
            "Regulation expected next year will raise compliance costs for smaller suppliers.",
            "Online sales channels grew {pct}% faster than traditional distribution.",
        ],
        table: (
            "Figure 1: Market share of leading competitors (%)",
            &["Competitor A", "Competitor B", "Competitor C", "Others"],
            "percent",
        ),
        recommendations: &[
            "Enter the market through a partnership in which both parties share the risk, rather than an acquisition.",
            "Focus initial sales on mid-sized businesses in two regions.",
            "Reassess the opportunity in twelve months.",
        ],
    },
    Kind {
        titles: &[
            "Site Inspection Report - {site}",
            "Health and Safety Inspection: {site}",
            "Facility Condition Assessment, {site}",
        ],
        summary: &[
            "The inspection of {site} on {date} found the site in satisfactory condition, with {n} items requiring corrective action.",
            "Several safety hazards were identified during the inspection of {site}; two require immediate attention.",
        ],
        background: &[
            "Inspections are carried out every six months at each facility operated by {company} to ensure compliance with safety regulations.",
        ],
        method: &[
            "The inspector walked through all areas of the site, reviewed maintenance logs and spoke with the site manager and {n} employees.",
        ],
        findings: &[
            "Fire extinguishers in the warehouse were last serviced more than a year ago.",
            "Emergency exits were clear and properly signed.",
            "Two forklifts had overdue maintenance inspections.",
            "Roof repairs estimated at {amount} are needed before winter.",
            "Staff training records were complete for {pct}% of employees.",
        ],
        table: (
            "Table 1: Inspection results by area",
            &["Warehouse", "Offices", "Loading dock", "Car park", "Kitchen"],
            "percent",
        ),
        recommendations: &[
            "Service all fire extinguishers within {days} days.",
            "Complete the overdue forklift inspections immediately.",
            "Obtain quotes for the roof repairs and schedule the work.",
        ],
    },
    Kind {
        titles: &[
            "Employee Engagement Survey {period}",
            "Workforce Report - {dept}",
            "Staff Turnover Analysis {period}",
        ],
        summary: &[
            "Employee engagement stands at {pct}%, slightly higher than last year. Turnover fell to {pct2}% across the company.",
            "Voluntary turnover in the {dept} department reached {pct2}%, well above the company average, and engagement scores declined.",
        ],
        background: &[
            "The annual engagement survey was open to all {n} hundred employees of {company} for three weeks.",
        ],
        method: &[
            "Results were analysed by department, tenure and location. Free-text comments were grouped by theme.",
        ],
        findings: &[
            "{pct}% of employees say they would recommend the company as a place to work.",
            "Workload and career development were the most common concerns.",
            "New hires leave most often within their first {weeks} months.",
            "Managers who hold regular one-to-one meetings have more engaged teams.",
            "The cost of replacing departing staff is estimated at {amount} per year.",
        ],
        table: (
            "Table 3: Engagement by department (%)",
            &["Finance", "Sales", "Operations", "Engineering", "Customer Service"],
            "percent",
        ),
        recommendations: &[
            "Introduce a structured onboarding program for new hires.",
            "Train managers to hold monthly career conversations.",
            "Review workload in the departments with the lowest scores.",
        ],
    },
];

pub(crate) fn generate(rng: &mut Rng) -> String {
    let kind = rng.pick_ref(KINDS);
    let company = Company::random(rng);
    let author = Person::random(rng);
    let currency = Currency::random(rng);
    let date = Date::random(rng);
    let style = rng.below(6);
    let period = match rng.below(3) {
        0 => format!("Q{} {}", rng.range(1, 4), date.year),
        1 => format!("FY{}", date.year),
        _ => date.month_year(),
    };
    let values_owned = [
        ("company", company.short()),
        ("period", period),
        ("pct", format!("{:.1}", rng.range(30, 950) as f64 / 10.0)),
        ("pct2", rng.range(2, 30).to_string()),
        ("amount", currency.fmt(rng.range(20, 9_000) * 100_000)),
        ("n", rng.range(3, 60).to_string()),
        ("n2", rng.range(3, 60).to_string()),
        ("weeks", rng.range(2, 8).to_string()),
        ("days", rng.pick(&["7", "10", "14", "30", "60"]).to_string()),
        (
            "site",
            format!(
                "{} {}",
                super::common::name_stem(rng),
                rng.pick(&["Distribution Center", "Plant", "Head Office", "Warehouse 2", "Data Center"])
            ),
        ),
        (
            "dept",
            rng.pick(&["Finance", "Procurement", "Customer Service", "Operations", "Human Resources", "Sales"])
                .to_string(),
        ),
        (
            "project",
            format!(
                "{} {}",
                rng.pick(&["Phoenix", "Atlas", "Horizon", "Compass", "Nova", "Keystone"]),
                rng.pick(&["ERP Upgrade", "CRM Rollout", "Office Relocation", "Data Platform", "Billing Migration"])
            ),
        ),
        (
            "market",
            rng.pick(&[
                "Cloud Accounting Software",
                "Electric Vehicle Charging",
                "Plant-Based Foods",
                "Commercial Cleaning",
                "Online Education",
                "Last-Mile Delivery",
            ])
            .to_string(),
        ),
        ("date", date.format(style)),
        ("code", format!("SIR-{}-{:03}", date.year, rng.range(1, 999))),
    ];
    let values: Vec<(&str, &str)> = values_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let fill = |template: &str| fill(template, &values);

    let numbered = rng.chance(0.5);
    let mut number = 0;
    let mut heading = |title: &str| {
        number += 1;
        if numbered { format!("{number}. {title}") } else { title.to_string() }
    };

    let title = fill(rng.pick(kind.titles));
    let mut title_block = vec![if rng.chance(0.25) { format!("Title: {title}") } else { title }];
    if rng.chance(0.6) {
        title_block.push(format!(
            "Prepared for: {}",
            rng.pick(&[
                "Board of Directors",
                "Executive Committee",
                "Management Team",
                "Audit Committee",
                "Steering Committee"
            ])
        ));
    }
    title_block.push(format!(
        "Prepared by: {}, {}",
        author.full(),
        rng.pick(&[
            "Finance",
            "Operations",
            "Strategy",
            "Quality Assurance",
            "Internal Audit",
            "IT",
            "Human Resources"
        ])
    ));
    title_block.push(format!("Date: {}", date.plus_days(rng.range(1, 20)).format(style)));
    if rng.chance(0.3) {
        title_block.push(format!(
            "Report No. {}-{}-{:03}",
            rng.pick(&["RPT", "R", "QA", "OPS"]),
            date.year,
            rng.range(1, 400)
        ));
    }
    if rng.chance(0.3) {
        title_block.push(format!("Classification: {}", rng.pick(&["Internal", "Confidential", "Public"])));
    }

    let mut sections = vec![title_block.join("\n")];
    let summary_title = rng.pick(&["Executive Summary", "Summary", "Overview", "Key Points"]);
    sections.push(format!("{}\n{}", heading(summary_title), fill(rng.pick(kind.summary))));
    if rng.chance(0.75) {
        let title = rng.pick(&["Background", "Introduction", "Scope and Objectives"]);
        sections.push(format!("{}\n{}", heading(title), fill(rng.pick(kind.background))));
    }
    if rng.chance(0.5) {
        let title = rng.pick(&["Methodology", "Approach", "Data and Methods"]);
        sections.push(format!("{}\n{}", heading(title), fill(rng.pick(kind.method))));
    }

    let mut findings = vec![heading(rng.pick(&["Findings", "Key Findings", "Results", "Analysis"]))];
    let bullet_style = rng.below(3);
    let findings_count = rng.range(3, 6) as usize;
    for (i, finding) in rng.sample(kind.findings, findings_count).iter().enumerate() {
        let text = fill(finding);
        findings.push(match bullet_style {
            0 => format!("{}. {text}", i + 1),
            1 => format!("- {text}"),
            _ => text,
        });
    }
    if rng.chance(0.7) {
        let (caption, rows, unit) = kind.table;
        findings.push(String::new());
        findings.push(caption.to_string());
        let mut minutes = 0;
        for row in rows {
            let value = match unit {
                "amount" => currency.fmt(rng.range(50, 5_000) * 100_000),
                "percent" => format!("{}%", rng.range(20, 98)),
                "minutes" => {
                    minutes += rng.range(2, 40);
                    minutes.to_string()
                }
                _ => rng.range(1, 90).to_string(),
            };
            findings.push(format!("{row}    {value}"));
        }
        if rng.chance(0.5) {
            findings.push(format!(
                "Source: {}",
                rng.pick(&[
                    "internal data",
                    "finance system",
                    "survey responses",
                    "company records",
                    "industry reports"
                ])
            ));
        }
    }
    sections.push(findings.join("\n"));

    let mut closing = Vec::new();
    if rng.chance(0.85) {
        let mut block = vec![heading(rng.pick(&["Recommendations", "Recommended Actions", "Actions"]))];
        let recommendation_count = rng.range(2, 3) as usize;
        for (i, recommendation) in rng.sample(kind.recommendations, recommendation_count).iter().enumerate() {
            block.push(format!("{}. {}", i + 1, fill(recommendation)));
        }
        closing.push(block.join("\n"));
    }
    if rng.chance(0.6) {
        let text = rng.pick(&[
            "Overall, the results are encouraging, but the issues identified above should be addressed before the next review.",
            "In conclusion, the situation is under control, and progress will be reported at the next meeting.",
            "The main conclusions are as follows: the issues are understood, owners have been named, and the steering group shall review progress monthly.",
            "The findings in this report will be discussed with the responsible managers, and an action plan will follow within {days} days.",
        ]);
        closing.push(format!("{}\n{}", heading("Conclusion"), fill(text)));
    }
    if closing.len() == 2 && rng.chance(0.3) {
        closing.swap(0, 1);
    }
    sections.extend(closing);
    if rng.chance(0.2) {
        sections.push(format!("{}\n{}", heading("Next Steps"), fill("A follow-up report will be issued after {period}. Owners of each action will confirm dates within {days} days.")));
    }
    if rng.chance(0.2) {
        sections.push(format!(
            "Appendix A: {}",
            rng.pick(&["Detailed data tables", "Survey questionnaire", "List of interviewees", "Glossary of terms"])
        ));
    }
    join_sections(sections)
}

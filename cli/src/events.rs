//! `weir events tail`: the embedded bus's messages as they are published — the events and
//! commands every service sends, one line each with its trace id — read beside a running
//! `weir up` without consuming anything.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;
use weir_core::Event;
use weir_store_sqlite::{Browse, SqliteLog, Stored};

use crate::data_dir::{DataDirArg, open_bus};

#[derive(Subcommand)]
pub enum Command {
    /// Follow the bus: print each message as it is published, until Ctrl-C.
    Tail(TailArgs),
}

#[derive(Args)]
#[command(after_help = "Examples:\n  weir events tail\n  weir events tail --topic 'orders*' --from-start\n  \
weir events tail --json | jq 'select(.event.type == \"order_completed\")'")]
pub struct TailArgs {
    /// Only topics matching this pattern (`*` and `?` are wildcards): `orders`, `doc.*`, `*.dlq`.
    #[arg(long)]
    topic: Option<String>,
    /// Start from the oldest message the bus still holds, not from now.
    #[arg(long, conflicts_with = "after")]
    from_start: bool,
    /// Start after this position (the first column of each line).
    #[arg(long)]
    after: Option<i64>,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per line: position, topic, and the event in CloudEvents' structured form.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataDirArg,
}

/// How often the bus is read again when nothing new was there.
const POLL: Duration = Duration::from_millis(200);

pub async fn run(command: Command) -> anyhow::Result<()> {
    let Command::Tail(args) = command;
    let bus = open_bus(&args.data.data_dir)?;
    let mut after = match (args.after, args.from_start) {
        (Some(after), _) => after,
        (None, true) => 0,
        (None, false) => bus.last_id().await?,
    };
    let mut left = args.count.unwrap_or(u64::MAX);
    while left > 0 {
        let page = tokio::select! {
            page = next_page(&bus, args.topic.clone(), after, left) => page?,
            _ = tokio::signal::ctrl_c() => break,
        };
        for stored in &page {
            println!("{}", if args.json { json_line(stored) } else { text_line(stored) });
        }
        after = page.last().map_or(after, |s| s.id);
        left -= page.len() as u64;
    }
    Ok(())
}

/// The next messages after `after` (at most `left`), waiting until there are some.
async fn next_page(bus: &SqliteLog, topics: Option<String>, after: i64, left: u64) -> anyhow::Result<Vec<Stored>> {
    let limit = usize::try_from(left.min(500)).unwrap_or(500);
    loop {
        let page = bus.browse(Browse { topics: topics.clone(), after, limit }).await?;
        if !page.is_empty() {
            return Ok(page);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn published_at(stored: &Stored) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(stored.published_at_ms).unwrap_or_default()
}

fn text_line(stored: &Stored) -> String {
    let at = published_at(stored).format("%H:%M:%S%.3f");
    let head = format!("{:>8}  {at}  {:<16}", stored.id, stored.topic);
    match Event::from_message(&stored.message) {
        Ok(event) => {
            let trace = event.trace_id().unwrap_or("-");
            format!("{head} {:<24} {:<38} {:<14} trace {trace}", event.kind, event.subject, event.source)
        }
        Err(e) => format!("{head} (not an event: {e}) key {}", stored.message.key),
    }
}

fn json_line(stored: &Stored) -> String {
    let event = match Event::from_message(&stored.message) {
        Ok(event) => serde_json::from_slice(&event.to_json()).unwrap_or_default(),
        Err(e) => json!({ "error": e.to_string(), "key": stored.message.key }),
    };
    json!({ "position": stored.id, "topic": stored.topic, "published_at": published_at(stored), "event": event })
        .to_string()
}

//! `weir dlq`: the dead letters of the embedded bus — list them, read one, send them back to
//! their topic once the cause is fixed, or discard them. Works beside a running `weir up` (the
//! bus file is shared; its consumers pick a redriven message up within half a second) or on a
//! stopped one's data directory.

use clap::{Args, Subcommand};
use weir_core::{
    bus::{Message, TYPE_HEADER},
    router::dead_letter,
};
use weir_store_sqlite::{DeadLetter, Disposal, LetterError, LetterQuery, SqliteLog};

use crate::{
    bench::table,
    data_dir::{DataDirArg, open_bus},
};

#[derive(Subcommand)]
pub enum Command {
    /// List dead letters, oldest first: where each came from, which group gave up, and why.
    List(ListArgs),
    /// Print one dead letter whole: why it died, its headers and its payload.
    Show {
        /// The letter's id (from `weir dlq list`).
        id: i64,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Publish letters again to their original topic, once the cause is fixed, and remove them
    /// from the dead letters. Only the consumer group that gave up on a message handles it again.
    Redrive(Pick),
    /// Remove letters for good.
    Discard(Pick),
}

#[derive(Args)]
pub struct ListArgs {
    /// Only the dead letters of this topic (e.g. `orders`).
    #[arg(long)]
    topic: Option<String>,
    /// At most this many letters.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only letters after this id (the next page).
    #[arg(long, default_value_t = 0)]
    after: i64,
    #[command(flatten)]
    data: DataDirArg,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  weir dlq redrive 42 43\n  weir dlq redrive --all --topic orders",
    group(clap::ArgGroup::new("letters").required(true).args(["ids", "all"]))
)]
pub struct Pick {
    /// The letters' ids (from `weir dlq list`). If any is not a dead letter, nothing changes.
    #[arg(conflicts_with = "all")]
    ids: Vec<i64>,
    /// Every dead letter there is now (of --topic, if given).
    #[arg(long)]
    all: bool,
    /// With --all: only the dead letters of this topic.
    #[arg(long, requires = "all")]
    topic: Option<String>,
    #[command(flatten)]
    data: DataDirArg,
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::List(args) => list(args).await,
        Command::Show { id, data } => show(&open_bus(&data.data_dir)?, id).await,
        Command::Redrive(pick) => dispose(pick, Disposal::Redrive).await,
        Command::Discard(pick) => dispose(pick, Disposal::Discard).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let bus = open_bus(&args.data.data_dir)?;
    let query = LetterQuery { topic: args.topic.clone(), after: args.after, limit: args.limit };
    let page = bus.dead_letters(query).await?;
    if page.letters.is_empty() {
        match (&args.topic, args.after) {
            (None, 0) => println!("No dead letters."),
            _ => println!("No dead letters here ({} in all).", page.total),
        }
        return Ok(());
    }
    let mut out = table(&["id", "topic", "group", "type", "subject", "attempts", "dead since", "reason"]);
    for letter in &page.letters {
        let header = |name| header(&letter.message, name);
        out.add_row([
            letter.id.to_string(),
            letter.topic.clone(),
            header(dead_letter::GROUP).to_owned(),
            header(TYPE_HEADER).to_owned(),
            letter.message.key.clone(),
            header(dead_letter::ATTEMPTS).to_owned(),
            header(dead_letter::AT).to_owned(),
            shorten(header(dead_letter::REASON), 60),
        ]);
    }
    println!("{out}");
    let last = page.letters.last().map_or(0, |l| l.id);
    let shown = page.letters.len();
    if args.after == 0 && shown as u64 == page.total {
        println!("{shown} dead letter(s).");
    } else if shown == args.limit {
        println!("{shown} shown, {} in all; the next page: --after {last}", page.total);
    } else {
        println!("{shown} shown, {} in all; that was the last page.", page.total);
    }
    println!("`weir dlq show ID` prints one whole; `weir dlq redrive ID` sends it back to its topic.");
    Ok(())
}

async fn show(bus: &SqliteLog, id: i64) -> anyhow::Result<()> {
    let Some(DeadLetter { id, topic, message }) = bus.dead_letter(id).await? else {
        return Err(LetterError::NotFound(id).into());
    };
    let header = |name| header(&message, name);
    println!("dead letter {id}");
    println!("topic:      {topic}");
    println!("group:      {}", header(dead_letter::GROUP));
    println!("reason:     {}", header(dead_letter::REASON));
    println!("attempts:   {}", header(dead_letter::ATTEMPTS));
    println!("dead since: {}", header(dead_letter::AT));
    println!("key:        {}", message.key);
    let original = dead_letter::original(&message);
    println!("headers:");
    for (name, value) in &original.headers {
        println!("  {name}: {value}");
    }
    println!("payload:");
    println!("{}", payload_text(&original));
    Ok(())
}

/// The value of header `name`, or nothing.
fn header<'a>(message: &'a Message, name: &str) -> &'a str {
    message.headers.get(name).map_or("", String::as_str)
}

/// The payload as indented JSON, as text, or as a size when it is neither.
fn payload_text(message: &Message) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&message.payload) {
        return serde_json::to_string_pretty(&json).unwrap_or_default();
    }
    match std::str::from_utf8(&message.payload) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("({} bytes, not text)", message.payload.len()),
    }
}

fn shorten(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Letters taken per transaction with `--all`.
const CHUNK: usize = 500;

async fn dispose(pick: Pick, disposal: Disposal) -> anyhow::Result<()> {
    let bus = open_bus(&pick.data.data_dir)?;
    let ids = if pick.all { every_letter(&bus, pick.topic).await? } else { pick.ids };
    let mut count = 0;
    for chunk in ids.chunks(CHUNK) {
        let topics = bus.dispose(chunk.to_vec(), disposal).await?;
        for (id, topic) in chunk.iter().zip(&topics) {
            match disposal {
                Disposal::Redrive => println!("redriven {id} → {topic}"),
                Disposal::Discard => println!("discarded {id} (from {topic})"),
            }
        }
        count += topics.len();
    }
    let done = if disposal == Disposal::Redrive { "redriven" } else { "discarded" };
    println!("{count} dead letter(s) {done}.");
    Ok(())
}

/// The ids of every dead letter there is now (of `topic`, if given).
async fn every_letter(bus: &SqliteLog, topic: Option<String>) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    loop {
        let after = ids.last().copied().unwrap_or(0);
        let page = bus.dead_letters(LetterQuery { topic: topic.clone(), after, limit: CHUNK }).await?;
        if page.letters.is_empty() {
            return Ok(ids);
        }
        ids.extend(page.letters.iter().map(|l| l.id));
    }
}

//! `weir replay <projection>`: rebuilds a read model from its service's event store — after a
//! change to the projection's code, or when the read model was damaged. It runs on a stopped
//! `weir up`'s data directory (it takes the directory's lock), so nothing reads a half-built
//! model; if it is cut short, the next `weir up` carries on from the model's checkpoint. With
//! `--database-url` it rebuilds a `weir serve` deployment's read model in the service's
//! PostgreSQL database, where stopping the service's processes first is the operator's part.

use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use weir_core::store::{self, projection::Projection};
use weir_store_sqlite::SqliteDatabase;

use crate::data_dir::{DataDir, DataDirArg};

#[derive(Args)]
#[command(after_help = "Examples:\n  weir replay orders.order_views                  # weir up stopped\n  \
weir replay orders.order_views --database-url postgres://postgres@127.0.0.1:5432/weir_orders\n                                                  \
# a weir serve deployment, its orders processes stopped")]
pub struct ReplayArgs {
    /// The projection to rebuild: orders.order_views (the orders behind GET /v1/orders).
    projection: String,
    #[command(flatten)]
    data: DataDirArg,
    /// The service's PostgreSQL database of a `weir serve` deployment, instead of a data
    /// directory. Stop the service's processes first: they would serve the half-built model.
    #[arg(long, env = "WEIR_DATABASE_URL")]
    database_url: Option<String>,
}

/// Events read and applied per transaction.
const BATCH: i64 = 1_000;

/// The projections there are, with the service whose database holds them.
const PROJECTIONS: [(&str, &str, &dyn Projection); 1] =
    [(weir_orders::OrderViews::NAME, weir_orders::NAME, &weir_orders::OrderViews)];

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let Some(&(name, service, projection)) = PROJECTIONS.iter().find(|(name, ..)| *name == args.projection) else {
        let known: Vec<&str> = PROJECTIONS.iter().map(|(name, ..)| *name).collect();
        bail!("no projection {:?}: the projections are {}", args.projection, known.join(", "));
    };
    let started = Instant::now();
    let failed =
        || format!("replaying {name} failed; run it again, or start the service to carry on from where it stopped");
    let done = if let Some(url) = &args.database_url {
        let db = weir_store_postgres::PgDatabase::connect(url).await.with_context(|| {
            format!("cannot open the {service} database: is PostgreSQL running? check --database-url")
        })?;
        store::projection::rebuild(&db, projection, BATCH).await.with_context(failed)?
    } else {
        let file = args.data.data_dir.join(format!("{service}.db"));
        if !file.is_file() {
            bail!(
                "no {} in {}: pass the --data-dir that `weir up` uses (or --database-url for a weir serve deployment)",
                file.display(),
                args.data.data_dir.display()
            );
        }
        let _lock = DataDir::open(&args.data.data_dir)?;
        let db = SqliteDatabase::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
        store::projection::rebuild(&db, projection, BATCH).await.with_context(failed)?
    };
    println!(
        "Replayed {} events into {name} from the {service} service's event store (up to position {}) in {:.1} s.",
        done.applied,
        done.position,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

//! `weir classify`: a gRPC client of the classification service (tonic), for people and
//! scripts: one text (unary `Classify`), its sections (server streaming) or many texts (client
//! streaming `ClassifyBatch`).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use weir_classification::{
    client,
    proto::{Classification, ClassifyRequest},
};

use crate::data_dir::read_grpc_token;

#[derive(Args)]
#[command(after_help = "Examples:\n  weir classify 'INVOICE No. 1042 ... Total due: 240.00 EUR'\n  \
weir classify --file letter.txt --sections\n  weir classify --file a.txt --file b.txt")]
pub struct ClassifyArgs {
    /// Texts to classify (or use --file).
    texts: Vec<String>,
    /// Read a text from a file (repeatable).
    #[arg(long = "file")]
    files: Vec<PathBuf>,
    /// Classify each section of the text as it streams back (server streaming).
    #[arg(long)]
    sections: bool,
    /// The classification service's gRPC address.
    #[arg(long, env = "WEIR_GRPC_URL", default_value = "http://127.0.0.1:50051")]
    url: String,
    /// The service token (default: the one `weir up` generated in --data-dir).
    #[arg(long, env = "WEIR_GRPC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The data directory of the `weir up` to ask (for its service token).
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "weir-data")]
    data_dir: PathBuf,
}

pub async fn run(args: ClassifyArgs) -> anyhow::Result<()> {
    let mut texts = args.texts;
    for file in &args.files {
        texts.push(std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?);
    }
    if texts.is_empty() {
        bail!("nothing to classify: give a text or --file PATH");
    }
    let token = match args.token {
        Some(token) => token,
        None => read_grpc_token(&args.data_dir)?,
    };
    let mut classifier = client::connect(&args.url, &token).await?;
    let request = |text: String| ClassifyRequest { text, document_id: None };
    if args.sections {
        for text in texts {
            let mut stream = classifier.classify_sections(request(text)).await.map_err(failed)?.into_inner();
            while let Some(section) = stream.message().await.map_err(failed)? {
                let answer = section.classification.unwrap_or_default();
                println!("section {:>3}: {}", section.index, line(&answer));
            }
        }
    } else if texts.len() == 1 {
        let text = texts.pop().expect("one text");
        println!("{}", line(&classifier.classify(request(text)).await.map_err(failed)?.into_inner()));
    } else {
        let batch = classifier
            .classify_batch(futures::stream::iter(texts.into_iter().map(request)))
            .await
            .map_err(failed)?
            .into_inner();
        for answer in &batch.results {
            println!("{}", line(answer));
        }
    }
    Ok(())
}

fn line(answer: &Classification) -> String {
    format!("{}\t{:.1}%\tmodel {}", answer.label, answer.confidence * 100.0, answer.model_version)
}

/// A gRPC status as a CLI error that says what to do.
fn failed(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unauthenticated => anyhow::anyhow!(
            "the classification service refused the service token ({}): pass the token of that `weir up` with --token or --data-dir",
            status.message()
        ),
        tonic::Code::Unavailable => {
            anyhow::anyhow!("the classification service is unavailable ({}): is `weir up` running?", status.message())
        }
        _ => anyhow::anyhow!("{}: {}", status.code(), status.message()),
    }
}

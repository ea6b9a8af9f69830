//! Shared by the test binaries: models trained on the sample corpus, and a gRPC server on a
//! loopback port.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_classification::{Limits, grpc};
use weir_classifier::{Model, SharedModel, TrainOptions, train};
use weir_samples::{DocClass, corpus, generate};

pub const TOKEN: &str = "test-service-token";

/// A model trained on the sample corpus with `version` (trained once per test binary).
pub fn model(version: &str) -> Model {
    static MODELS: OnceLock<Mutex<HashMap<String, Model>>> = OnceLock::new();
    let mut models = MODELS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    models
        .entry(version.to_owned())
        .or_insert_with(|| {
            let samples: Vec<_> = corpus(7, 40).into_iter().map(|s| (s.class.as_str().to_owned(), s.text)).collect();
            let options = TrainOptions { version: Some(version.to_owned()), ..TrainOptions::default() };
            train(&samples, &options).expect("the sample corpus trains")
        })
        .clone()
}

/// Saves the model of `version` at `dir/model.json` and returns the path.
pub fn write_model(dir: &Path, version: &str) -> PathBuf {
    let path = dir.join("model.json");
    model(version).save(&path).expect("the model saves");
    path
}

/// A generated document of `class` (seeds outside the training corpus's).
pub fn document(class: DocClass, seed: u64) -> String {
    generate(class, 900_000 + seed)
}

/// Serves the gRPC API of `model` on a loopback port; returns its URL and a token that stops it.
pub async fn serve(model: SharedModel, limits: Limits) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("a local address"));
    let stop = CancellationToken::new();
    tokio::spawn(grpc::serve(model, TOKEN, limits, listener, stop.clone()));
    (url, stop)
}

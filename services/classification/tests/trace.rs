//! The trace-context interceptor seen from outside: a caller's `traceparent` becomes the
//! `trace_id` of the call's span in the log. A test binary of its own, because it installs a
//! log subscriber: tests running beside it on other threads would change what `tracing` caches
//! about which spans are enabled.

mod common;

use common::{TOKEN, document, serve, write_model};
use tonic::{Request, transport::Channel};
use weir_classification::{
    Limits,
    proto::{ClassifyRequest, classifier_client::ClassifierClient},
};
use weir_classifier::SharedModel;
use weir_samples::DocClass;

/// Collects what the log writes (JSON lines, with the fields of the enclosing spans).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread, so that the server's tasks log to this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn the_callers_traceparent_becomes_the_calls_trace_id() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().expect("temp dir");
    let model = SharedModel::load(write_model(dir.path(), "v1")).expect("the model loads");
    let (url, stop) = serve(model, Limits::default()).await;
    let channel = Channel::from_shared(url).expect("url").connect().await.expect("connects");
    let traced = |token: &str, trace_id: &str| {
        let mut call = Request::new(ClassifyRequest { text: document(DocClass::Invoice, 7), document_id: None });
        call.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
        call.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
        call
    };
    let mut raw = ClassifierClient::new(channel);
    raw.classify(traced(TOKEN, "4bf92f3577b34da6a3ce929d0e0e4736")).await.expect("classified");
    raw.classify(traced("wrong", "0af7651916cd43dd8448eb211c80319c")).await.expect_err("refused");

    let log = String::from_utf8(captured.0.lock().expect("log").clone()).expect("UTF-8 log");
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let classified = lines
        .iter()
        .find(|l| l["fields"]["message"] == "classified")
        .unwrap_or_else(|| panic!("no `classified` log line in:\n{log}"));
    assert_eq!(classified["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{classified}");
    assert_eq!(classified["span"]["method"], "Classify", "{classified}");
    let refused = lines
        .iter()
        .find(|l| l["fields"]["message"] == "gRPC call refused")
        .unwrap_or_else(|| panic!("no refusal logged in:\n{log}"));
    assert_eq!(refused["fields"]["trace_id"], "0af7651916cd43dd8448eb211c80319c", "{refused}");
    stop.cancel();
}

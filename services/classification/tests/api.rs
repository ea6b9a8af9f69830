//! The service as the platform runs it: `doc.processed` in through a real bus, `doc.classified`
//! out through the outbox, the gRPC API on a loopback port, and model files replaced while it
//! runs.
//!
//! To know that a message was handled before looking for the absence of an effect, a test sends
//! a *barrier*: a later event with the same subject, which the router handles strictly after.

mod common;

use std::time::Duration;

use common::{TOKEN, document, model, write_model};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_classification::{Config, Error, Service, client, proto::ClassifyRequest};
use weir_contracts::{
    Contract, DocumentClassified, DocumentFailed, DocumentMetadata, DocumentProcessed, MediaType, topics,
};
use weir_core::{Event, RouterOptions};
use weir_samples::DocClass;
use weir_testkit::app::{PATIENCE, TestWorld};

/// The service running on `world`'s bus with its gRPC API on a loopback port.
struct App {
    world: TestWorld,
    grpc_url: String,
    model_path: std::path::PathBuf,
    stop: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn spawn_app() -> App {
    let world = TestWorld::new();
    let model_path = write_model(world.dir.path(), "v1");
    let config =
        Config { model_path: model_path.clone(), service_token: TOKEN.into(), router: RouterOptions::default() };
    let service = Service::build(world.kernel("classification").await, config)
        .await
        .expect("the service builds")
        .with_model_poll(Duration::from_millis(50));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let grpc_url = format!("http://{}", listener.local_addr().expect("a local address"));
    let stop = CancellationToken::new();
    tokio::spawn(service.serve_grpc(listener, stop.clone()));
    tokio::spawn(service.run(stop.clone()));
    App { world, grpc_url, model_path, stop }
}

fn processed(document_id: Uuid, excerpt: &str) -> DocumentProcessed {
    DocumentProcessed {
        document_id,
        user_id: Uuid::now_v7(),
        filename: "scan.pdf".into(),
        media_type: MediaType::Pdf,
        text_key: format!("text/u/{document_id}"),
        thumbnail_key: format!("thumbnails/u/{document_id}"),
        excerpt: excerpt.into(),
        text_chars: excerpt.chars().count() as u64,
        metadata: DocumentMetadata { pages: 1, ..DocumentMetadata::default() },
    }
}

fn caused_by(cause: &Event) -> impl Fn(&Event) -> bool + '_ {
    move |e: &Event| e.causation_id == Some(cause.id)
}

#[tokio::test]
async fn a_processed_invoice_is_classified_as_an_invoice() {
    let app = spawn_app().await;
    let mut classified = app.world.watch(topics::DOC_CLASSIFIED).await;
    let id = Uuid::now_v7();
    let input = processed(id, &document(DocClass::Invoice, 1));
    let cause = app.world.publish("processing", &input).await;
    let (answer, event) = classified.expect::<DocumentClassified>(|c| c.document_id == id).await;
    assert_eq!(answer.label, "invoice");
    assert_eq!(answer.model_version, "v1");
    assert_eq!((answer.user_id, answer.filename.as_str()), (input.user_id, "scan.pdf"));
    let expected = model("v1").predict(&input.excerpt).confidence;
    assert_eq!(answer.confidence, expected, "the model's own probability");
    assert_eq!(event.causation_id, Some(cause.id));
    assert_eq!((event.subject.as_str(), event.source.as_str()), (id.to_string().as_str(), "classification"));

    for (i, class) in [DocClass::Resume, DocClass::Report].into_iter().enumerate() {
        let id = Uuid::now_v7();
        app.world.publish("processing", &processed(id, &document(class, 10 + i as u64))).await;
        let (answer, _) = classified.expect::<DocumentClassified>(|c| c.document_id == id).await;
        assert_eq!(answer.label, class.as_str());
    }
}

#[tokio::test]
async fn a_message_delivered_twice_is_classified_once() {
    let app = spawn_app().await;
    let mut classified = app.world.watch(topics::DOC_CLASSIFIED).await;
    let id = Uuid::now_v7();
    let first = processed(id, &document(DocClass::Contract, 2));
    let mut event = first.to_event("processing");
    app.world.keyring.sign(&mut event);
    app.world.publish_event(topics::DOC_PROCESSED, event.clone()).await;
    app.world.publish_event(topics::DOC_PROCESSED, event.clone()).await;
    // The barrier: the same document again as a new event, handled after both deliveries.
    let barrier = app.world.publish("processing", &first).await;
    let mut seen = Vec::new();
    while !seen.iter().any(caused_by(&barrier)) {
        let (_, e) = classified.expect::<DocumentClassified>(|c| c.document_id == id).await;
        seen.push(e);
    }
    let answers = seen.iter().filter(|e| caused_by(&event)(e)).count();
    assert_eq!(answers, 1, "one DocumentClassified for one event id, whatever the deliveries");
}

#[tokio::test]
async fn a_document_without_text_fails_and_failures_are_ignored() {
    let app = spawn_app().await;
    let mut processed_topic = app.world.watch(topics::DOC_PROCESSED).await;
    let mut classified = app.world.watch(topics::DOC_CLASSIFIED).await;
    let blank = Uuid::now_v7();
    let cause = app.world.publish("processing", &processed(blank, " \n ")).await;
    let (failed, event) =
        processed_topic.expect::<DocumentFailed>(|f| f.document_id == blank && f.stage == "classification").await;
    assert!(failed.reason.contains("no text"), "{}", failed.reason);
    assert_eq!(event.causation_id, Some(cause.id));

    // A processing failure is not for this service: nothing comes of it.
    let failed_doc = Uuid::now_v7();
    let processing_failure = DocumentFailed {
        document_id: failed_doc,
        user_id: Uuid::now_v7(),
        filename: "bomb.pdf".into(),
        stage: "processing".into(),
        reason: "the parser ran out of memory".into(),
    };
    app.world.publish("processing", &processing_failure).await;
    let barrier = app.world.publish("processing", &processed(failed_doc, &document(DocClass::Letter, 3))).await;
    let (answer, event) = classified.expect::<DocumentClassified>(|c| c.document_id == failed_doc).await;
    assert_eq!(event.causation_id, Some(barrier.id), "the first answer for that document is the barrier's");
    assert_eq!(answer.label, "letter");
    let later = processed_topic.drain(Duration::from_millis(300)).await;
    let stages: Vec<_> = later
        .iter()
        .filter_map(|e| DocumentFailed::decode(e).and_then(Result::ok))
        .filter(|f| f.document_id == failed_doc && f.stage == "classification")
        .collect();
    assert!(stages.is_empty(), "a failure is not answered: {stages:?}");
    assert!(
        classified
            .try_expect::<DocumentClassified>(Duration::from_millis(300), |c| c.document_id == blank)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_replaced_model_file_is_used_without_a_restart() {
    let app = spawn_app().await;
    let mut grpc = client::connect(&app.grpc_url, TOKEN).await.expect("connects");
    let text = document(DocClass::Receipt, 5);
    let version =
        |answer: tonic::Response<weir_classification::proto::Classification>| answer.into_inner().model_version;
    let ask = || ClassifyRequest { text: text.clone(), document_id: None };
    assert_eq!(version(grpc.classify(ask()).await.expect("classified")), "v1");

    // Retrain: a new file renamed over the old one, as `weir classifier train` does.
    model("v2").save(&app.model_path).expect("saves");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if version(grpc.classify(ask()).await.expect("classified")) == "v2" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new model was not picked up within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut classified = app.world.watch(topics::DOC_CLASSIFIED).await;
    let id = Uuid::now_v7();
    app.world.publish("processing", &processed(id, &document(DocClass::Invoice, 6))).await;
    let (answer, _) = classified.expect::<DocumentClassified>(|c| c.document_id == id).await;
    assert_eq!((answer.label.as_str(), answer.model_version.as_str()), ("invoice", "v2"));

    // A broken file does not replace a working model.
    std::fs::write(&app.model_path, b"{ half a model").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(version(grpc.classify(ask()).await.expect("still classifying")), "v2");
}

#[tokio::test]
async fn the_service_does_not_build_without_a_model_or_with_a_bad_token() {
    let world = TestWorld::new();
    let missing = world.dir.path().join("missing.json");
    let config = Config { model_path: missing, service_token: TOKEN.into(), router: RouterOptions::default() };
    let error = Service::build(world.kernel("classification").await, config).await.err().expect("no model");
    assert!(matches!(error, Error::Model(weir_classifier::Error::ModelMissing { .. })), "{error}");
    assert!(error.to_string().contains("train one first"), "{error}");

    let model_path = write_model(world.dir.path(), "v1");
    let config = Config { model_path, service_token: "has spaces".into(), router: RouterOptions::default() };
    let error = Service::build(world.kernel("classification").await, config).await.err().expect("bad token");
    assert!(matches!(error, Error::InvalidToken), "{error}");
}

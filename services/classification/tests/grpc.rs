//! The gRPC API through a real tonic client on a loopback port: the four call shapes, the
//! interceptors, status codes, limits, health and reflection.

mod common;

use std::time::Duration;

use common::{TOKEN, document, serve, write_model};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, transport::Channel};
use weir_classification::{
    Limits, client,
    proto::{ClassifyRequest, classifier_client::ClassifierClient},
};
use weir_classifier::SharedModel;
use weir_samples::DocClass;

/// A server with model `v1` and `limits`; stopped when dropped.
struct Server {
    url: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(limits: Limits) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_model(dir.path(), "v1");
    let (url, stop) = serve(SharedModel::load(path).expect("the model loads"), limits).await;
    Server { url, stop, _dir: dir }
}

async fn connect(server: &Server) -> client::Client {
    client::connect(&server.url, TOKEN).await.expect("connects")
}

/// A plain channel, without the token.
async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.url.clone()).expect("url").connect().await.expect("connects")
}

fn request(text: impl Into<String>) -> ClassifyRequest {
    ClassifyRequest { text: text.into(), document_id: None }
}

#[tokio::test]
async fn classify_answers_with_label_confidence_version_and_scores() {
    let server = start(Limits::default()).await;
    let mut client = connect(&server).await;
    let invoice = ClassifyRequest { text: document(DocClass::Invoice, 1), document_id: Some("doc-1".into()) };
    let answer = client.classify(invoice).await.expect("classified").into_inner();
    assert_eq!(answer.label, "invoice");
    assert_eq!(answer.model_version, "v1");
    assert_eq!(answer.document_id.as_deref(), Some("doc-1"));
    assert!(answer.confidence > 0.0 && answer.confidence <= 1.0, "{}", answer.confidence);
    assert_eq!(answer.scores.len(), 6);
    assert_eq!((answer.scores[0].label.as_str(), answer.scores[0].score), ("invoice", answer.confidence));
    assert!(answer.scores.windows(2).all(|w| w[0].score >= w[1].score), "sorted: {:?}", answer.scores);

    let resume = client.classify(request(document(DocClass::Resume, 1))).await.expect("classified").into_inner();
    assert_eq!(resume.label, "resume");
    assert_eq!(resume.document_id, None);
}

#[tokio::test]
async fn classify_sections_streams_one_answer_per_section_then_ends() {
    let server = start(Limits::default()).await;
    let mut client = connect(&server).await;
    let (letter, report) = (document(DocClass::Letter, 2), document(DocClass::Report, 2));
    let text = format!("{letter}\n\n{report}");
    let mut stream = client.classify_sections(request(text.clone())).await.expect("a stream").into_inner();
    let mut sections = Vec::new();
    while let Some(section) = stream.next().await {
        sections.push(section.expect("a section"));
    }
    assert!(sections.len() >= 2, "a letter and a report make several sections: {}", sections.len());
    let chars: Vec<char> = text.chars().collect();
    let mut previous_end = 0;
    for (i, section) in sections.iter().enumerate() {
        assert_eq!(section.index as usize, i);
        assert!(section.start >= previous_end && section.end > section.start, "{section:?}");
        let body: String = chars[section.start as usize..section.end as usize].iter().collect();
        assert_eq!(body, body.trim(), "sections are trimmed");
        let classification = section.classification.as_ref().expect("a classification");
        assert_eq!(classification.model_version, "v1");
        previous_end = section.end;
    }
    assert_eq!(previous_end as usize, text.trim_end().chars().count(), "the sections cover the text to its end");
    // Sections from the letter's part are mostly letter, from the report's part mostly report.
    let letter_chars = letter.chars().count() as u32;
    let majority = |in_part: &dyn Fn(u32) -> bool| {
        let labels: Vec<&str> = sections
            .iter()
            .filter(|s| in_part(s.start))
            .map(|s| s.classification.as_ref().map(|c| c.label.as_str()).unwrap_or_default())
            .collect();
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        labels.iter().for_each(|l| *counts.entry(l).or_default() += 1);
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l.to_owned()).unwrap_or_default()
    };
    assert_eq!(majority(&|start| start < letter_chars), "letter", "{sections:?}");
    assert_eq!(majority(&|start| start > letter_chars), "report", "{sections:?}");
}

#[tokio::test]
async fn classify_batch_answers_every_text_in_order_with_counts() {
    let server = start(Limits::default()).await;
    let mut client = connect(&server).await;
    let classes = [DocClass::Invoice, DocClass::Receipt, DocClass::Contract, DocClass::Invoice, DocClass::Letter];
    let requests: Vec<_> = classes.iter().enumerate().map(|(i, c)| request(document(*c, 10 + i as u64))).collect();
    let batch = client.classify_batch(futures::stream::iter(requests)).await.expect("classified").into_inner();
    let labels: Vec<&str> = batch.results.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["invoice", "receipt", "contract", "invoice", "letter"]);
    let counts: std::collections::BTreeMap<_, _> = batch.counts.into_iter().collect();
    assert_eq!(
        counts,
        [("contract".into(), 1), ("invoice".into(), 2), ("letter".into(), 1), ("receipt".into(), 1)].into()
    );

    let empty = client.classify_batch(futures::stream::iter(Vec::new())).await.expect("an empty batch").into_inner();
    assert!(empty.results.is_empty() && empty.counts.is_empty());
}

#[tokio::test]
async fn classify_stream_answers_each_text_as_it_arrives() {
    let server = start(Limits::default()).await;
    let mut client = connect(&server).await;
    let (sender, outbound) = tokio::sync::mpsc::channel::<ClassifyRequest>(1);
    let outbound = futures::stream::unfold(outbound, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut answers = client.classify_stream(outbound).await.expect("a stream").into_inner();
    // Each answer arrives while the stream is still open, before the next text is sent.
    for (i, class) in [DocClass::Resume, DocClass::Contract, DocClass::Receipt].into_iter().enumerate() {
        let id = format!("doc-{i}");
        sender
            .send(ClassifyRequest { text: document(class, 20 + i as u64), document_id: Some(id.clone()) })
            .await
            .expect("sent");
        let answer = tokio::time::timeout(Duration::from_secs(10), answers.next())
            .await
            .expect("answered while the stream is open")
            .expect("an answer")
            .expect("a classification");
        assert_eq!((answer.label.as_str(), answer.document_id.as_deref()), (class.as_str(), Some(id.as_str())));
    }
    drop(sender);
    assert!(answers.next().await.is_none(), "the answers end when the texts do");
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_unauthenticated() {
    let server = start(Limits::default()).await;
    let channel = channel(&server).await;
    let mut anonymous = ClassifierClient::new(channel.clone());
    let status = anonymous.classify(request("an invoice")).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("authorization"), "{}", status.message());

    let mut wrong = client::connect(&server.url, "not-the-token").await.expect("connects");
    let status = wrong.classify(request("an invoice")).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = wrong.classify_batch(futures::stream::iter(vec![request("x")])).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "streams are guarded too: {status:?}");

    let mut raw = ClassifierClient::new(channel);
    let mut call = Request::new(request("an invoice"));
    call.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("ascii"));
    call.metadata_mut()
        .insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().expect("ascii"));
    raw.classify(call).await.expect("the right token passes, with a trace context");
}

#[tokio::test]
async fn bad_texts_are_invalid_arguments_that_say_what_to_fix() {
    let limits = Limits { max_text_chars: 1_000, max_batch: 3, ..Limits::default() };
    let server = start(limits).await;
    let mut client = connect(&server).await;

    for blank in ["", "  \n\t "] {
        let status = client.classify(request(blank)).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("empty"), "{}", status.message());
    }
    let status = client.classify(request("word ".repeat(300))).await.expect_err("too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("1500 characters") && status.message().contains("at most 1000"),
        "{}",
        status.message()
    );
    let status = client.classify_sections(request("")).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);

    let too_many = vec![request("a letter"); 4];
    let status = client.classify_batch(futures::stream::iter(too_many)).await.expect_err("too many");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("at most 3"), "{}", status.message());
    let with_blank = vec![request("an invoice"), request(" ")];
    let status = client.classify_batch(futures::stream::iter(with_blank)).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("text 1"), "{}", status.message());

    // In the bidirectional stream the good text is answered, the bad one ends the call.
    let texts = vec![request(document(DocClass::Invoice, 3).chars().take(900).collect::<String>()), request("")];
    let mut answers = client.classify_stream(futures::stream::iter(texts)).await.expect("a stream").into_inner();
    assert!(answers.next().await.expect("an answer").is_ok());
    let status = answers.next().await.expect("an error").expect_err("the empty text");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(answers.next().await.is_none());
}

#[tokio::test]
async fn an_oversized_message_is_refused_by_the_transport() {
    let limits = Limits { max_message_bytes: 10_000, ..Limits::default() };
    let server = start(limits).await;
    let mut client = connect(&server).await;
    let status = client.classify(request("x".repeat(20_000))).await.expect_err("too big");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

#[tokio::test]
async fn without_a_model_calls_are_unavailable_until_one_appears() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.json");
    let shared = SharedModel::open(&path);
    let (url, stop) = serve(shared.clone(), Limits::default()).await;
    let mut client = client::connect(&url, TOKEN).await.expect("connects");
    let status = client.classify(request("an invoice")).await.expect_err("no model");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("weir classifier train"), "{}", status.message());

    write_model(dir.path(), "v1");
    assert!(shared.reload_if_changed().expect("loads"));
    let answer = client.classify(request(document(DocClass::Receipt, 4))).await.expect("classified").into_inner();
    assert_eq!((answer.label.as_str(), answer.model_version.as_str()), ("receipt", "v1"));
    stop.cancel();
}

#[tokio::test]
async fn health_says_serving_without_a_token() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let server = start(Limits::default()).await;
    let mut health = HealthClient::new(channel(&server).await);
    let check = |service: &str| HealthCheckRequest { service: service.to_owned() };
    let answer = health.check(check("weir.classifier.v1.Classifier")).await.expect("answered").into_inner();
    assert_eq!(answer.status(), ServingStatus::Serving);
    let unknown = health.check(check("no.such.Service")).await.expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_and_describes_the_classifier() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = start(Limits::default()).await;
    let mut reflection = ServerReflectionClient::new(channel(&server).await);
    let ask = |message| ServerReflectionRequest { host: String::new(), message_request: Some(message) };
    let questions = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("weir.classifier.v1.Classifier".into())),
    ];
    let mut answers =
        reflection.server_reflection_info(futures::stream::iter(questions)).await.expect("a stream").into_inner();

    let listed = answers.next().await.expect("an answer").expect("ok").message_response;
    let Some(MessageResponse::ListServicesResponse(list)) = listed else { panic!("not a service list: {listed:?}") };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"weir.classifier.v1.Classifier"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let described = answers.next().await.expect("an answer").expect("ok").message_response;
    let Some(MessageResponse::FileDescriptorResponse(files)) = described else {
        panic!("no descriptor: {described:?}")
    };
    let file = <prost_types::FileDescriptorProto as prost::Message>::decode(files.file_descriptor_proto[0].as_slice())
        .expect("a file descriptor");
    assert_eq!(file.package(), "weir.classifier.v1");
    let methods: Vec<&str> = file.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, ["Classify", "ClassifySections", "ClassifyBatch", "ClassifyStream"]);
}

/// Older clients (grpcurl before 1.8.8, many GUI clients) only speak reflection v1alpha.
#[tokio::test]
async fn reflection_v1alpha_lists_the_classifier_for_older_clients() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = start(Limits::default()).await;
    let mut reflection = ServerReflectionClient::new(channel(&server).await);
    let question = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter(vec![question]))
        .await
        .expect("the v1alpha service answers")
        .into_inner();
    let listed = answers.next().await.expect("an answer").expect("ok").message_response;
    let Some(MessageResponse::ListServicesResponse(list)) = listed else { panic!("not a service list: {listed:?}") };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"weir.classifier.v1.Classifier"), "{names:?}");
}

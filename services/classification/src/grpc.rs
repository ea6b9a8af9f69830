//! The gRPC API (`proto/classifier.proto`): the classifier service behind its interceptors
//! ([`crate::intercept`]), plus the open health and reflection services.
//!
//! Every call takes the current model once and uses it to the end, so the answers of one call
//! (a batch, the sections of one text) all come from one model version even if a new model is
//! swapped in meanwhile. Classification runs on the blocking pool: it is CPU work.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures::{Stream, StreamExt, stream};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Response, Status, Streaming,
    service::interceptor::InterceptedService,
    transport::{Server, server::TcpIncoming},
};
use tracing::{Instrument, Span, debug, info, info_span};
use weir_classifier::{Model, Prediction, SharedModel};

use crate::{
    Error, Result,
    intercept::{Interceptors, RequestTrace, ServiceToken},
    proto::{
        self, BatchResult, ClassifyRequest, LabelScore, SectionClassification,
        classifier_server::{Classifier, ClassifierServer},
    },
    sections::{MIN_SECTION_CHARS, sections},
};

/// Bounds on what one call may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Characters in one text (any call); longer is `INVALID_ARGUMENT`.
    pub max_text_chars: usize,
    /// Encoded size of one request message; larger is refused by the transport (`OUT_OF_RANGE`).
    pub max_message_bytes: usize,
    /// Texts in one `ClassifyBatch`; more is `INVALID_ARGUMENT`.
    pub max_batch: usize,
    /// Characters of a `document_id`.
    pub max_document_id_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_text_chars: 200_000, max_message_bytes: 1024 * 1024, max_batch: 1_000, max_document_id_chars: 200 }
    }
}

/// Serves the classifier (behind its interceptors), gRPC health (the classifier `SERVING`) and
/// reflection (v1 and v1alpha) on `listener` until `shutdown`; open streams are ended with
/// `UNAVAILABLE` so that shutdown never waits on a client. The model is read from `model` on
/// every call, so a model swapped in by [`SharedModel::watch`] is used at once; while `model`
/// has none, calls are `UNAVAILABLE`.
pub async fn serve(
    model: SharedModel,
    token: &str,
    limits: Limits,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let token = ServiceToken::new(token).ok_or(Error::InvalidToken)?;
    let address = listener.local_addr().map_err(|e| Error::Listen(e.to_string()))?;
    let api = Api { model, limits: Arc::new(limits.clone()), shutdown: shutdown.clone() };
    let classifier = ClassifierServer::new(api).max_decoding_message_size(limits.max_message_bytes);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ClassifierServer<Api>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| Error::Reflection(e.to_string()))?;
    // Older clients (grpcurl before 1.8.8, many GUI clients) ask v1alpha only.
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| Error::Reflection(e.to_string()))?;

    info!(%address, "classifier gRPC API listening");
    let stopping = shutdown.clone();
    Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(classifier, Interceptors::new(&token)))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
            stopping.cancelled().await;
            health.set_not_serving::<ClassifierServer<Api>>().await;
        })
        .await
        .map_err(Error::Serve)
}

type AnswerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone)]
struct Api {
    model: SharedModel,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
}

impl Api {
    fn model(&self) -> Result<Arc<Model>, Status> {
        self.model.current().ok_or_else(|| {
            Status::unavailable(format!(
                "no classifier model is loaded yet: train one (`weir classifier train`) to {}",
                self.model.path().display()
            ))
        })
    }

    /// Checks one request; `position` names it in a stream ("text 3: ...").
    fn check(&self, request: &ClassifyRequest, position: Option<usize>) -> Result<(), Status> {
        let problem = if request.text.trim().is_empty() {
            Some("the text is empty: send the document's text in `text`".to_owned())
        } else {
            let chars = request.text.chars().count();
            if chars > self.limits.max_text_chars {
                Some(format!(
                    "the text has {chars} characters, more than the limit of {limit}: send at most {limit} \
                     (the start of a document is enough to classify it)",
                    limit = self.limits.max_text_chars
                ))
            } else if request
                .document_id
                .as_ref()
                .is_some_and(|id| id.chars().count() > self.limits.max_document_id_chars)
            {
                Some(format!("the document_id is longer than {} characters", self.limits.max_document_id_chars))
            } else {
                None
            }
        };
        match (problem, position) {
            (None, _) => Ok(()),
            (Some(problem), None) => Err(Status::invalid_argument(problem)),
            (Some(problem), Some(i)) => Err(Status::invalid_argument(format!("text {i} (counting from 0): {problem}"))),
        }
    }

    /// Checks and classifies one request with `model`.
    async fn answer(
        &self,
        model: &Arc<Model>,
        request: ClassifyRequest,
        position: Option<usize>,
    ) -> Result<proto::Classification, Status> {
        self.check(&request, position)?;
        let prediction = predict(model.clone(), request.text).await?;
        debug!(label = %prediction.label, confidence = prediction.confidence, "classified");
        Ok(classification(model, prediction, request.document_id))
    }
}

/// Runs the model on the blocking pool.
async fn predict(model: Arc<Model>, text: String) -> Result<Prediction, Status> {
    tokio::task::spawn_blocking(move || model.predict(&text))
        .await
        .map_err(|e| Status::internal(format!("classification failed: {e}")))
}

fn classification(model: &Model, prediction: Prediction, document_id: Option<String>) -> proto::Classification {
    proto::Classification {
        label: prediction.label,
        confidence: prediction.confidence,
        model_version: model.version().to_owned(),
        scores: prediction.scores.into_iter().map(|(label, score)| LabelScore { label, score }).collect(),
        document_id,
    }
}

/// The call's span, with the trace id the [`Trace`](crate::intercept::Trace) interceptor found.
fn span<T>(request: &Request<T>, method: &'static str) -> Span {
    let trace_id = request.extensions().get::<RequestTrace>().map(|t| t.trace_id.clone()).unwrap_or_default();
    info_span!("grpc", service = "weir.classifier.v1.Classifier", method, trace_id = %trace_id)
}

fn shutting_down() -> Status {
    Status::unavailable("the classification service is shutting down: retry on another instance")
}

#[tonic::async_trait]
impl Classifier for Api {
    async fn classify(&self, request: Request<ClassifyRequest>) -> Result<Response<proto::Classification>, Status> {
        let span = span(&request, "Classify");
        async move {
            let model = self.model()?;
            self.answer(&model, request.into_inner(), None).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    type ClassifySectionsStream = AnswerStream<SectionClassification>;

    async fn classify_sections(
        &self,
        request: Request<ClassifyRequest>,
    ) -> Result<Response<Self::ClassifySectionsStream>, Status> {
        let span = span(&request, "ClassifySections");
        let request = request.into_inner();
        let (model, found) = span.in_scope(|| {
            let model = self.model()?;
            self.check(&request, None)?;
            let found = sections(&request.text, MIN_SECTION_CHARS);
            debug!(sections = found.len(), "classifying sections");
            Ok::<_, Status>((model, found))
        })?;
        let text = Arc::new(request.text);
        let (api, span) = (self.clone(), span.clone());
        let answers = stream::iter(found.into_iter().enumerate()).then(move |(index, section)| {
            let (model, text, api, document_id) =
                (model.clone(), text.clone(), api.clone(), request.document_id.clone());
            async move {
                if api.shutdown.is_cancelled() {
                    return Err(shutting_down());
                }
                let prediction = predict(model.clone(), section.text(&text).to_owned()).await?;
                Ok(SectionClassification {
                    index: index as u32,
                    start: section.start as u32,
                    end: section.end as u32,
                    classification: Some(classification(&model, prediction, document_id)),
                })
            }
            .instrument(span.clone())
        });
        Ok(Response::new(Box::pin(until_error(answers))))
    }

    async fn classify_batch(
        &self,
        request: Request<Streaming<ClassifyRequest>>,
    ) -> Result<Response<BatchResult>, Status> {
        let span = span(&request, "ClassifyBatch");
        let mut inbound = request.into_inner();
        async move {
            let model = self.model()?;
            let mut results = Vec::new();
            let mut counts: HashMap<String, u32> = HashMap::new();
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next?,
                    _ = self.shutdown.cancelled() => return Err(shutting_down()),
                };
                let Some(item) = next else { break };
                if results.len() == self.limits.max_batch {
                    return Err(Status::invalid_argument(format!(
                        "the batch has more than {max} texts: send at most {max} per ClassifyBatch call",
                        max = self.limits.max_batch
                    )));
                }
                let answer = self.answer(&model, item, Some(results.len())).await?;
                *counts.entry(answer.label.clone()).or_default() += 1;
                results.push(answer);
            }
            debug!(texts = results.len(), "batch classified");
            Ok(Response::new(BatchResult { results, counts }))
        }
        .instrument(span)
        .await
    }

    type ClassifyStreamStream = AnswerStream<proto::Classification>;

    async fn classify_stream(
        &self,
        request: Request<Streaming<ClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        let span = span(&request, "ClassifyStream");
        let model = self.model()?;
        let state = (request.into_inner(), self.clone(), 0usize);
        // Each text is answered as soon as it arrives; the stream ends when the client's does.
        let answers = stream::unfold(Some(state), move |state| {
            let (model, span) = (model.clone(), span.clone());
            async move {
                let (mut inbound, api, position) = state?;
                let next = tokio::select! {
                    next = inbound.message() => next,
                    _ = api.shutdown.cancelled() => Err(shutting_down()),
                };
                match next {
                    Ok(Some(item)) => {
                        let answer = api.answer(&model, item, Some(position)).instrument(span).await;
                        Some((answer, Some((inbound, api, position + 1))))
                    }
                    Ok(None) => None,
                    Err(status) => Some((Err(status), None)),
                }
            }
        });
        Ok(Response::new(Box::pin(until_error(answers))))
    }
}

/// Ends a stream after its first error (which is passed on: it becomes the call's status).
fn until_error<T: Send + 'static>(
    answers: impl Stream<Item = Result<T, Status>> + Send + 'static,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static {
    answers
        .scan(false, |failed, answer| {
            let next = if *failed {
                None
            } else {
                *failed = answer.is_err();
                Some(answer)
            };
            futures::future::ready(next)
        })
        .fuse()
}

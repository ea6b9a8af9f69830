//! A client for the classifier API that sends the service token on every call (what
//! `weir classify` uses).
//!
//! ```no_run
//! # async fn example() -> weir_classification::Result<()> {
//! use weir_classification::{client, proto::ClassifyRequest};
//! let mut classifier = client::connect("http://127.0.0.1:50051", "the-service-token").await?;
//! let request = ClassifyRequest { text: "INVOICE No. 42 ...".into(), document_id: None };
//! let answer = classifier.classify(request).await.map_err(client::Error::from)?;
//! println!("{} ({:.0}%)", answer.get_ref().label, answer.get_ref().confidence * 100.0);
//! # Ok(()) }
//! ```

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::{Error as CrateError, intercept::ServiceToken, proto::classifier_client::ClassifierClient};

pub use crate::Error;

/// The classifier client with the token interceptor.
pub type Client = ClassifierClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Connects to the classifier at `url` (e.g. `http://127.0.0.1:50051`) with the service token.
pub async fn connect(url: &str, token: &str) -> Result<Client, CrateError> {
    let token = ServiceToken::new(token).ok_or(CrateError::InvalidToken)?;
    let bearer: MetadataValue<Ascii> =
        format!("Bearer {}", token.expose()).parse().map_err(|_| CrateError::InvalidToken)?;
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|_| CrateError::InvalidUrl(url.to_owned()))?;
    let channel = endpoint.connect().await.map_err(|source| CrateError::Connect { url: url.to_owned(), source })?;
    Ok(ClassifierClient::with_interceptor(channel, BearerToken(bearer)))
}

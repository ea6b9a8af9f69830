//! The event envelope: CloudEvents 1.0 attributes plus Weir's extensions, its JSON
//! (structured-mode) encoding, and the binary-mode mapping onto message headers.
//!
//! Decoding untrusted bytes never panics: every failure is a [`DecodeError`] that names the
//! attribute at fault.

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::bus::{Headers, Message};

pub const SPEC_VERSION: &str = "1.0";
const CONTENT_TYPE: &str = "application/json";

/// An immutable fact (or a command addressed to one owner), wrapped in a CloudEvents envelope.
#[derive(Clone, PartialEq)]
pub struct Event {
    /// UUIDv7: unique, and sortable by creation time.
    pub id: Uuid,
    /// The service that produced it, e.g. `orders`.
    pub source: String,
    /// The CloudEvents `type`, e.g. `order_created`.
    pub kind: String,
    /// Creation time, truncated to microseconds so that it survives encoding unchanged.
    pub time: DateTime<Utc>,
    /// The CloudEvents `subject`: the aggregate id, which is the ordering and partition key.
    pub subject: String,
    /// The version of the data's schema (`dataschema` = `/schemas/{type}/v{version}.json`).
    pub data_version: u32,
    /// The id shared by every event of one business transaction.
    pub correlation_id: Uuid,
    /// The id of the event that caused this one.
    pub causation_id: Option<Uuid>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub signature: Option<Signature>,
    /// The payload, as JSON text.
    pub data: Bytes,
}

/// An HMAC-SHA256 signature and the id of the key that made it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Signature {
    pub key_id: String,
    /// base64url (no padding) of the MAC.
    pub mac: String,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("type", &self.kind)
            .field("source", &self.source)
            .field("subject", &self.subject)
            .field("data_version", &self.data_version)
            .field("correlation_id", &self.correlation_id)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// Why bytes or headers are not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a JSON CloudEvent: {0}")]
    Json(String),
    #[error("missing required attribute `{0}`")]
    Missing(&'static str),
    #[error("attribute `{attribute}` is invalid: {reason}")]
    Invalid { attribute: &'static str, reason: String },
    #[error("data does not match the expected shape: {0}")]
    Data(String),
}

impl Event {
    /// A new event with a fresh id and correlation id; `data` is serialised to JSON.
    pub fn new(
        source: impl Into<String>,
        kind: impl Into<String>,
        subject: impl Into<String>,
        data: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        let id = Uuid::now_v7();
        Ok(Self {
            id,
            source: source.into(),
            kind: kind.into(),
            time: Utc::now().trunc_subsecs(6),
            subject: subject.into(),
            data_version: 1,
            correlation_id: id,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            signature: None,
            data: Bytes::from(serde_json::to_vec(data)?),
        })
    }

    /// Sets the schema version of the data.
    pub fn with_version(mut self, version: u32) -> Self {
        self.data_version = version;
        self
    }

    /// Marks this event as caused by `cause`: same correlation and trace, causation = its id.
    pub fn caused_by(mut self, cause: &Event) -> Self {
        self.correlation_id = cause.correlation_id;
        self.causation_id = Some(cause.id);
        self.traceparent.clone_from(&cause.traceparent);
        self.tracestate.clone_from(&cause.tracestate);
        self
    }

    /// Decodes the data as `T`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        serde_json::from_slice(&self.data).map_err(|e| DecodeError::Data(e.to_string()))
    }

    /// The W3C trace id (32 hex digits) of the event's `traceparent`, if it has one.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(|t| t.split('-').nth(1))
    }

    pub fn dataschema(&self) -> String {
        format!("/schemas/{}/v{}.json", self.kind, self.data_version)
    }

    fn time_string(&self) -> String {
        self.time.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// The bytes a signature covers: every attribute that gives the event its meaning, each
    /// length-prefixed so that no two different events share a canonical form.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let id = self.id.to_string();
        let time = self.time_string();
        let version = self.data_version.to_string();
        let correlation = self.correlation_id.to_string();
        let causation = self.causation_id.map(|c| c.to_string()).unwrap_or_default();
        let parts: [&[u8]; 9] = [
            id.as_bytes(),
            self.source.as_bytes(),
            self.kind.as_bytes(),
            time.as_bytes(),
            self.subject.as_bytes(),
            version.as_bytes(),
            correlation.as_bytes(),
            causation.as_bytes(),
            &self.data,
        ];
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
        for part in parts {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Structured-mode JSON (`application/cloudevents+json`).
    pub fn to_json(&self) -> Vec<u8> {
        let data: &RawValue = serde_json::from_slice(&self.data).unwrap_or_else(|_| null_raw());
        let wire = Wire {
            specversion: Some(SPEC_VERSION.into()),
            id: Some(self.id.to_string()),
            source: Some(self.source.clone()),
            kind: Some(self.kind.clone()),
            time: Some(self.time_string()),
            subject: Some(self.subject.clone()),
            dataschema: Some(self.dataschema()),
            datacontenttype: Some(CONTENT_TYPE.into()),
            correlationid: Some(self.correlation_id.to_string()),
            causationid: self.causation_id.map(|c| c.to_string()),
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
            signature: self.signature.as_ref().map(|s| s.mac.clone()),
            signaturekeyid: self.signature.as_ref().map(|s| s.key_id.clone()),
            data: Some(data),
        };
        serde_json::to_vec(&wire).expect("an envelope of strings always serialises")
    }

    /// Decodes structured-mode JSON from untrusted bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: Wire<'_> = serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
        let attrs = Attributes {
            specversion: wire.specversion,
            id: wire.id,
            source: wire.source,
            kind: wire.kind,
            time: wire.time,
            subject: wire.subject,
            dataschema: wire.dataschema,
            datacontenttype: wire.datacontenttype,
            correlationid: wire.correlationid,
            causationid: wire.causationid,
            traceparent: wire.traceparent,
            tracestate: wire.tracestate,
            signature: wire.signature,
            signaturekeyid: wire.signaturekeyid,
        };
        let data = wire
            .data
            .map(|d| Bytes::copy_from_slice(d.get().as_bytes()))
            .unwrap_or_else(|| Bytes::from_static(b"null"));
        attrs.into_event(data)
    }

    /// Binary mode: attributes as `ce-*` headers, the data as the payload.
    pub fn to_message(&self) -> Message {
        let mut headers = Headers::new();
        let mut put = |k: &str, v: String| {
            headers.insert(k.to_owned(), v);
        };
        put("ce-specversion", SPEC_VERSION.into());
        put("ce-id", self.id.to_string());
        put("ce-source", self.source.clone());
        put("ce-type", self.kind.clone());
        put("ce-time", self.time_string());
        put("ce-subject", self.subject.clone());
        put("ce-dataschema", self.dataschema());
        put("content-type", CONTENT_TYPE.into());
        put("ce-correlationid", self.correlation_id.to_string());
        if let Some(c) = self.causation_id {
            put("ce-causationid", c.to_string());
        }
        if let Some(t) = &self.traceparent {
            put("ce-traceparent", t.clone());
        }
        if let Some(t) = &self.tracestate {
            put("ce-tracestate", t.clone());
        }
        if let Some(s) = &self.signature {
            put("ce-signature", s.mac.clone());
            put("ce-signaturekeyid", s.key_id.clone());
        }
        Message { key: self.subject.clone(), headers, payload: self.data.clone() }
    }

    /// Decodes a binary-mode message from untrusted headers and payload.
    pub fn from_message(message: &Message) -> Result<Self, DecodeError> {
        let h = |name: &str| message.headers.get(name).cloned();
        let attrs = Attributes {
            specversion: h("ce-specversion"),
            id: h("ce-id"),
            source: h("ce-source"),
            kind: h("ce-type"),
            time: h("ce-time"),
            subject: h("ce-subject"),
            dataschema: h("ce-dataschema"),
            datacontenttype: h("content-type"),
            correlationid: h("ce-correlationid"),
            causationid: h("ce-causationid"),
            traceparent: h("ce-traceparent"),
            tracestate: h("ce-tracestate"),
            signature: h("ce-signature"),
            signaturekeyid: h("ce-signaturekeyid"),
        };
        serde_json::from_slice::<&RawValue>(&message.payload)
            .map_err(|e| DecodeError::Invalid { attribute: "data", reason: format!("not JSON: {e}") })?;
        attrs.into_event(message.payload.clone())
    }
}

fn null_raw() -> &'static RawValue {
    serde_json::from_str("null").expect("null is JSON")
}

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataschema: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlationid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causationid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signaturekeyid: Option<String>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

/// Attributes as found on the wire, before validation; shared by both modes.
struct Attributes {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    kind: Option<String>,
    time: Option<String>,
    subject: Option<String>,
    dataschema: Option<String>,
    datacontenttype: Option<String>,
    correlationid: Option<String>,
    causationid: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    signature: Option<String>,
    signaturekeyid: Option<String>,
}

fn invalid(attribute: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid { attribute, reason: reason.into() }
}

fn parse_uuid(attribute: &'static str, s: &str) -> Result<Uuid, DecodeError> {
    Uuid::parse_str(s).map_err(|e| invalid(attribute, format!("{s:?} is not a UUID: {e}")))
}

fn non_empty(attribute: &'static str, v: Option<String>) -> Result<String, DecodeError> {
    match v {
        None => Err(DecodeError::Missing(attribute)),
        Some(s) if s.is_empty() => Err(invalid(attribute, "must not be empty")),
        Some(s) => Ok(s),
    }
}

impl Attributes {
    fn into_event(self, data: Bytes) -> Result<Event, DecodeError> {
        let specversion = non_empty("specversion", self.specversion)?;
        if specversion != SPEC_VERSION {
            return Err(invalid("specversion", format!("{specversion:?} is not supported; expected \"1.0\"")));
        }
        let id = parse_uuid("id", &non_empty("id", self.id)?)?;
        let source = non_empty("source", self.source)?;
        let kind = non_empty("type", self.kind)?;
        let time = non_empty("time", self.time)?;
        let time = DateTime::parse_from_rfc3339(&time)
            .map_err(|e| invalid("time", format!("{time:?} is not RFC 3339: {e}")))?
            .with_timezone(&Utc);
        let subject = non_empty("subject", self.subject)?;
        let data_version = match self.dataschema {
            None => 1,
            Some(schema) => schema
                .strip_prefix(&format!("/schemas/{kind}/v"))
                .and_then(|rest| rest.strip_suffix(".json"))
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| invalid("dataschema", format!("{schema:?} is not /schemas/{kind}/v<N>.json")))?,
        };
        if let Some(ct) = self.datacontenttype
            && !ct.starts_with(CONTENT_TYPE)
        {
            return Err(invalid("datacontenttype", format!("{ct:?}; only application/json is supported")));
        }
        let correlation_id = match self.correlationid {
            Some(c) => parse_uuid("correlationid", &c)?,
            None => id,
        };
        let causation_id = self.causationid.map(|c| parse_uuid("causationid", &c)).transpose()?;
        let signature = match (self.signature, self.signaturekeyid) {
            (Some(mac), Some(key_id)) => Some(Signature { key_id, mac }),
            (None, None) => None,
            (Some(_), None) => return Err(DecodeError::Missing("signaturekeyid")),
            (None, Some(_)) => return Err(DecodeError::Missing("signature")),
        };
        if let Some(tp) = &self.traceparent
            && !is_traceparent(tp)
        {
            return Err(invalid("traceparent", format!("{tp:?} is not a W3C traceparent")));
        }
        Ok(Event {
            id,
            source,
            kind,
            time,
            subject,
            data_version,
            correlation_id,
            causation_id,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            signature,
            data,
        })
    }
}

/// `version-traceid-parentid-flags`, lowercase hex: `00-<32>-<16>-<2>`.
pub fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Event {
        let mut e = Event::new("orders", "order_created", "order-1", &json!({"qty": 2, "note": "é"})).unwrap();
        e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        e.causation_id = Some(Uuid::now_v7());
        e.signature = Some(Signature { key_id: "k1".into(), mac: "abc".into() });
        e
    }

    #[test]
    fn json_round_trip() {
        let e = sample();
        let back = Event::from_json(&e.to_json()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.data::<serde_json::Value>().unwrap()["note"], "é");
    }

    #[test]
    fn message_round_trip() {
        let e = sample().with_version(3);
        let m = e.to_message();
        assert_eq!(m.key, "order-1");
        assert_eq!(m.headers["ce-type"], "order_created");
        assert_eq!(m.headers["ce-dataschema"], "/schemas/order_created/v3.json");
        assert_eq!(Event::from_message(&m).unwrap(), e);
    }

    #[test]
    fn ids_are_uuid_v7() {
        assert_eq!(sample().id.get_version_num(), 7);
    }

    #[test]
    fn bad_input_is_an_error_naming_the_attribute() {
        let good: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("missing required attribute `id`", Box::new(|v| drop(v.as_object_mut().unwrap().remove("id")))),
            ("attribute `id`", Box::new(|v| v["id"] = json!("nope"))),
            ("attribute `specversion`", Box::new(|v| v["specversion"] = json!("0.3"))),
            ("attribute `time`", Box::new(|v| v["time"] = json!("yesterday"))),
            ("missing required attribute `subject`", Box::new(|v| drop(v.as_object_mut().unwrap().remove("subject")))),
            ("attribute `dataschema`", Box::new(|v| v["dataschema"] = json!("/schemas/other/v1.json"))),
            ("attribute `traceparent`", Box::new(|v| v["traceparent"] = json!("00-zz"))),
            (
                "missing required attribute `signaturekeyid`",
                Box::new(|v| drop(v.as_object_mut().unwrap().remove("signaturekeyid"))),
            ),
            ("attribute `type`", Box::new(|v| v["type"] = json!(""))),
        ];
        for (expected, mutate) in cases {
            let mut v = good.clone();
            mutate(&mut v);
            let err = Event::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let inputs: [&[u8]; 6] = [b"", b"{", b"[]", b"null", b"\xff\xfe", br#"{"specversion":1}"#];
        for input in inputs {
            assert!(Event::from_json(input).is_err());
            let m = Message { key: String::new(), headers: Headers::new(), payload: Bytes::copy_from_slice(input) };
            assert!(Event::from_message(&m).is_err());
        }
        // Every truncation of a valid event is either valid or an error, never a panic.
        let full = sample().to_json();
        for n in 0..full.len() {
            let _ = Event::from_json(&full[..n]);
        }
    }

    #[test]
    fn binary_mode_rejects_non_json_payload() {
        let mut m = sample().to_message();
        m.payload = Bytes::from_static(b"not json");
        assert!(matches!(Event::from_message(&m), Err(DecodeError::Invalid { attribute: "data", .. })));
    }

    #[test]
    fn caused_by_carries_correlation_and_trace() {
        let cause = sample();
        let effect = Event::new("payments", "payment_successful", "order-1", &json!({})).unwrap().caused_by(&cause);
        assert_eq!(effect.correlation_id, cause.correlation_id);
        assert_eq!(effect.causation_id, Some(cause.id));
        assert_eq!(effect.traceparent, cause.traceparent);
    }

    #[test]
    fn canonical_form_changes_with_every_attribute() {
        let e = sample();
        let base = e.canonical_bytes();
        let mut variants = vec![];
        let mut v = e.clone();
        v.subject.push('x');
        variants.push(v);
        let mut v = e.clone();
        v.kind.push('x');
        variants.push(v);
        let mut v = e.clone();
        v.data = Bytes::from_static(b"{}");
        variants.push(v);
        let mut v = e.clone();
        v.data_version += 1;
        variants.push(v);
        for v in variants {
            assert_ne!(v.canonical_bytes(), base);
        }
    }
}

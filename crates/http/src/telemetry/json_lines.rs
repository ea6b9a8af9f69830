//! The JSON lines logger: one object per event, written with one `write` call.
//!
//! ```json
//! {"timestamp":"2026-12-04T18:41:58.123456Z","level":"INFO","target":"weir_orders::api",
//!  "message":"order placed","order_id":"…","lines":1,
//!  "spans":[{"name":"request","request_id":"…","trace_id":"…","method":"POST","route":"/v1/orders"}]}
//! ```
//!
//! The event's fields sit at the top level and `spans` lists every enclosing span, outermost
//! first, so a line logged deep inside a handler still carries the request's `trace_id`.
//!
//! Why not `tracing_subscriber::fmt().json()`: it keeps each span's fields as a JSON text and
//! parses that text again for every line logged inside the span (twice, for `span` and
//! `spans`), which made logging about an eighth of `weir up`'s CPU under load. Here a span's
//! fields are encoded once, when it opens, and copied into each line as they are.

use std::{cell::RefCell, fmt, io::Write};

use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{Layer, fmt::MakeWriter, layer::Context, registry::LookupSpan};

/// The layer; `W` makes the writer each line goes to (stderr in production).
pub(super) struct JsonLines<W> {
    make_writer: W,
}

impl<W> JsonLines<W> {
    pub(super) fn new(make_writer: W) -> Self {
        Self { make_writer }
    }
}

/// A span's `"name":…,"field":…` members, encoded when it opened (and extended by `record`).
struct SpanMembers(String);

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut members = String::with_capacity(128);
        members.push_str("\"name\":");
        push_str(&mut members, attrs.metadata().name());
        attrs.record(&mut Members(&mut members));
        span.extensions_mut().insert(SpanMembers(members));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanMembers(members)) = extensions.get_mut::<SpanMembers>() {
            values.record(&mut Members(members));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        thread_local! {
            static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
        }
        LINE.with(|line| {
            // A line logged while writing a line (a writer that logs) gets a buffer of its own.
            let mut fresh = String::new();
            let mut borrowed = line.try_borrow_mut();
            let line = match borrowed.as_deref_mut() {
                Ok(line) => line,
                Err(_) => &mut fresh,
            };
            line.clear();
            let metadata = event.metadata();
            line.push_str("{\"timestamp\":\"");
            line.push_str(&chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
            line.push_str("\",\"level\":\"");
            line.push_str(metadata.level().as_str());
            line.push_str("\",\"target\":");
            push_str(line, metadata.target());
            event.record(&mut Members(line));
            if let Some(scope) = ctx.event_scope(event) {
                line.push_str(",\"spans\":[");
                for (i, span) in scope.from_root().enumerate() {
                    if i > 0 {
                        line.push(',');
                    }
                    line.push('{');
                    if let Some(SpanMembers(members)) = span.extensions().get::<SpanMembers>() {
                        line.push_str(members);
                    }
                    line.push('}');
                }
                line.push(']');
            }
            line.push_str("}\n");
            // One write per line, so lines from concurrent threads never interleave. A failed
            // write to the log has nowhere to be reported.
            let _ = self.make_writer.make_writer_for(metadata).write_all(line.as_bytes());
        });
    }
}

/// Appends `,"field":value` for each field visited.
struct Members<'a>(&'a mut String);

impl Members<'_> {
    fn key(&mut self, field: &Field) {
        self.0.push(',');
        push_str(self.0, field.name());
        self.0.push(':');
    }

    fn integer(&mut self, field: &Field, value: impl itoa::Integer) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
    }
}

impl Visit for Members<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_str(self.0, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.integer(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.integer(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.integer(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.integer(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            self.0.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            // JSON has no NaN or infinity.
            push_str(self.0, &value.to_string());
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }

    /// `%display` and `?debug` fields, and `message`: written through the escaper, with no
    /// intermediate string.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.0.push('"');
        let _ = fmt::write(&mut Escaped(self.0), format_args!("{value:?}"));
        self.0.push('"');
    }
}

/// Appends `value` as a JSON string.
fn push_str(out: &mut String, value: &str) {
    out.push('"');
    let _ = fmt::Write::write_str(&mut Escaped(out), value);
    out.push('"');
}

/// Escapes what JSON strings may not hold as is: quotes, backslashes and control characters.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
            self.0.push_str(&rest[..at]);
            let c = rest.as_bytes()[at];
            match c {
                b'"' => self.0.push_str("\\\""),
                b'\\' => self.0.push_str("\\\\"),
                b'\n' => self.0.push_str("\\n"),
                b'\r' => self.0.push_str("\\r"),
                b'\t' => self.0.push_str("\\t"),
                _ => {
                    let _ = fmt::Write::write_fmt(self.0, format_args!("\\u{c:04x}"));
                }
            }
            rest = &rest[at + 1..];
        }
        self.0.push_str(rest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &str) -> String {
        let mut out = String::new();
        push_str(&mut out, value);
        out
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        for value in ["plain", "quote \" and \\ backslash", "line\nbreak\ttab\r", "\u{1}\u{1f}", "ünïcødé ✓", ""]
        {
            let parsed: String = serde_json::from_str(&escaped(value)).unwrap();
            assert_eq!(parsed, value);
        }
    }
}

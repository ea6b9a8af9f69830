"""Weir's events as a client of another language sees them: the CloudEvents binary-mode
attributes (``ce-*`` names, as Weir's bus headers name them before a transport's binding
renames them: ``ce_`` on Kafka, ``cloudEvents:`` on AMQP), the JSON payload, the schema each
event's ``dataschema`` names (``schemas/<type>.v<n>.json`` in the repository), and the signature
a producer outside Weir must put on an event for Weir to handle it.

Used by the interop tests, which run the seeds' own Python clients (confluent-kafka, pika,
redis-py) against Weir's brokers. Standard library plus ``jsonschema``.
"""

import base64
import datetime
import hashlib
import hmac
import json
import pathlib
import re
import struct
import uuid

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "schemas"
DATASCHEMA = re.compile(r"^/schemas/([a-z0-9_]+)/v([0-9]+)\.json$")


def schema_of(attributes):
    """The JSON Schema the event's ``ce-dataschema`` names, from the repository's schemas/."""
    match = DATASCHEMA.match(attributes.get("ce-dataschema", ""))
    if not match:
        raise ValueError(f"no dataschema of the form /schemas/<type>/v<n>.json: {attributes!r}")
    kind, version = match.groups()
    if kind != attributes.get("ce-type"):
        raise ValueError(f"dataschema {kind} does not match ce-type {attributes.get('ce-type')}")
    return json.loads((SCHEMAS / f"{kind}.v{version}.json").read_text())


def validate(attributes, payload):
    """Checks a Weir event: the required CloudEvents attributes, and its data against its
    schema. Returns the decoded data; raises on anything wrong."""
    import jsonschema

    for name in ("ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-subject"):
        if not attributes.get(name):
            raise ValueError(f"missing CloudEvents attribute {name}: {attributes!r}")
    if attributes["ce-specversion"] != "1.0":
        raise ValueError(f"specversion {attributes['ce-specversion']}")
    if attributes.get("content-type") != "application/json":
        raise ValueError(f"content-type {attributes.get('content-type')}")
    data = json.loads(payload)
    jsonschema.validate(data, schema_of(attributes))
    return data


def _canonical(attributes, payload):
    """What Weir's signature covers: nine length-prefixed parts (crates/core/src/event.rs,
    ``Event::canonical_bytes``)."""
    version = DATASCHEMA.match(attributes["ce-dataschema"]).group(2)
    parts = [
        attributes["ce-id"],
        attributes["ce-source"],
        attributes["ce-type"],
        attributes["ce-time"],
        attributes["ce-subject"],
        version,
        attributes["ce-correlationid"],
        attributes.get("ce-causationid", ""),
    ]
    out = b"".join(struct.pack(">Q", len(p.encode())) + p.encode() for p in parts)
    return out + struct.pack(">Q", len(payload)) + payload


def event(kind, subject, data, source="python-producer", version=1):
    """A new event as binary-mode attributes and a JSON payload (unsigned)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    event_id = str(uuid.uuid4())
    attributes = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": kind,
        "ce-time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "ce-subject": subject,
        "ce-dataschema": f"/schemas/{kind}/v{version}.json",
        "ce-correlationid": event_id,
        "content-type": "application/json",
    }
    return attributes, json.dumps(data, separators=(",", ":")).encode()


def sign(attributes, payload, key_id, secret):
    """Signs the event as Weir's keyring does: HMAC-SHA256 over the canonical form, base64url
    without padding, with the key's id."""
    mac = hmac.new(secret, _canonical(attributes, payload), hashlib.sha256).digest()
    attributes["ce-signature"] = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    attributes["ce-signaturekeyid"] = key_id
    return attributes


def verify(attributes, payload, secret):
    """True when the event carries a valid signature made with ``secret``."""
    mac = hmac.new(secret, _canonical(attributes, payload), hashlib.sha256).digest()
    expected = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    return hmac.compare_digest(expected, attributes.get("ce-signature", ""))

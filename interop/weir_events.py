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


def _version(attributes):
    """The data version the ``ce-dataschema`` names (1 when there is none, as in Weir)."""
    schema = attributes.get("ce-dataschema")
    if schema is None:
        return "1"
    match = DATASCHEMA.match(schema)
    if not match or match.group(1) != attributes.get("ce-type"):
        raise ValueError(f"dataschema {schema!r} is not /schemas/{attributes.get('ce-type')}/v<n>.json")
    return match.group(2)


def _time(attributes):
    """``ce-time`` as a UTC datetime; raises unless it is RFC 3339 with a zone."""
    value = attributes["ce-time"]
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"ce-time {value!r} has no time zone")
    return parsed.astimezone(datetime.timezone.utc)


def schema_of(attributes):
    """The JSON Schema the event's ``ce-dataschema`` names, from the repository's schemas/."""
    return json.loads((SCHEMAS / f"{attributes['ce-type']}.v{_version(attributes)}.json").read_text())


def validate(attributes, payload):
    """Checks a Weir event as Weir decodes one: the required CloudEvents attributes and their
    forms (UUID ids, RFC 3339 time, JSON content), and its data against its schema. Returns the
    decoded data; raises on anything wrong."""
    import jsonschema

    for name in ("ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-subject"):
        if not attributes.get(name):
            raise ValueError(f"missing CloudEvents attribute {name}: {attributes!r}")
    if attributes["ce-specversion"] != "1.0":
        raise ValueError(f"specversion {attributes['ce-specversion']}")
    for name in ("ce-id", "ce-correlationid", "ce-causationid"):
        if name in attributes:
            uuid.UUID(attributes[name])
    _time(attributes)
    if not attributes.get("content-type", "application/json").startswith("application/json"):
        raise ValueError(f"content-type {attributes.get('content-type')}")
    data = json.loads(payload)
    jsonschema.validate(data, schema_of(attributes))
    return data


def _canonical(attributes, payload):
    """What Weir's signature covers: nine length-prefixed parts (crates/core/src/event.rs,
    ``Event::canonical_bytes``), with the time as Weir renders it (microseconds, ``Z``) and the
    correlation id defaulting to the event's id, as Weir decodes them."""
    parts = [
        attributes["ce-id"],
        attributes["ce-source"],
        attributes["ce-type"],
        _time(attributes).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        attributes["ce-subject"],
        _version(attributes),
        attributes.get("ce-correlationid", attributes["ce-id"]),
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
    try:
        mac = hmac.new(secret, _canonical(attributes, payload), hashlib.sha256).digest()
    except (KeyError, ValueError):
        return False
    expected = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    return hmac.compare_digest(expected, attributes.get("ce-signature", ""))

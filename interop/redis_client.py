"""Weir's Redis Streams transport as a client outside Weir sees it, with redis-py alone.

Weir (crates/bus-redis) keeps a topic as one stream per partition, ``<prefix>:{<topic>}:<n>``,
``n = partition_of(key, partitions)``; an entry's fields are ``key``, one ``h:<name>`` per header
(the CloudEvents binary-mode attributes ``ce-*`` and ``content-type``) and ``payload`` (the JSON
data). This script reads Weir's events as a consumer group of its own would, and publishes an
event as an outside producer must for Weir to handle it: signed, on the partition stream of its
key.

    read      --url URL --prefix P --topic T --count N [--group G] [--secret-hex S] [--timeout SEC]
    publish   --url URL --prefix P --topic T --partitions 16 --key-id K --secret-hex S
              [--product-id UUID] [--sku SKU] [--name NAME] [--amount CENTS] [--currency EUR]
              [--unsigned]
    partition --partitions 16 KEY...

``read`` prints one JSON line per event (``type``, ``id``, ``subject``, ``data``) and acks it;
``publish`` prints one JSON line (``id``, ``subject``, ``stream``, ``entry``); ``partition`` prints
each key's partition. Any invalid event, or fewer than N events within the timeout, ends the
script with a message on stderr and exit status 1. Needs ``redis`` (redis-py) and ``jsonschema``.
"""

import argparse
import json
import os
import re
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import weir_events  # noqa: E402

KEY_FIELD = b"key"
PAYLOAD_FIELD = b"payload"
HEADER_PREFIX = b"h:"

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK_64 = (1 << 64) - 1


class Invalid(Exception):
    """An entry that is not a valid Weir event."""


def partition_of(key, partitions):
    """``weir_core::bus::partition_of``: FNV-1a 64 over the key's UTF-8 bytes, modulo the
    partition count (0 partitions counts as 1)."""
    h = FNV_OFFSET
    for byte in key.encode("utf-8"):
        h ^= byte
        h = (h * FNV_PRIME) & MASK_64
    return h % max(partitions, 1)


def stream_name(prefix, topic, partition):
    return f"{prefix}:{{{topic}}}:{partition}"


def connect(url):
    import redis

    return redis.Redis.from_url(url, decode_responses=False)


def partition_streams(client, prefix, topic):
    """The topic's partition streams that exist, in partition order: every key matching the
    documented naming (group state such as ``...:g:<group>:retry`` shares the prefix, so the
    partition must be a number and the key a stream)."""
    pattern = re.compile(rb"^" + re.escape(f"{prefix}:{{{topic}}}:".encode()) + rb"([0-9]+)$")
    found = []
    # Topic and prefix are [A-Za-z0-9._-]: nothing in them is special to SCAN's glob.
    for name in client.scan_iter(match=f"{prefix}:{{{topic}}}:*".encode(), count=1000):
        match = pattern.match(name)
        if match and client.type(name) == b"stream":
            found.append((int(match.group(1)), name))
    return [name for _, name in sorted(found)]


def ensure_group(client, stream, group):
    """``XGROUP CREATE <stream> <group> 0``: a new group reads from the start, as Weir's do."""
    import redis

    try:
        client.xgroup_create(stream, group, id="0", mkstream=False)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def text(value, what):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid(f"{what} is not UTF-8: {e}") from None


def decode_entry(fields):
    """An entry's fields as (key, attributes, payload): ``h:<name>`` becomes attribute
    ``<name>``; fields Weir does not write are ignored, as Weir ignores them."""
    key, attributes, payload = None, {}, None
    for name, value in fields.items():
        if name == KEY_FIELD:
            key = text(value, "the key")
        elif name == PAYLOAD_FIELD:
            payload = value
        elif name.startswith(HEADER_PREFIX):
            header = text(name[len(HEADER_PREFIX):], "a header name")
            attributes[header] = text(value, f"header {header}")
    if payload is None:
        raise Invalid("no payload field")
    return key, attributes, payload


def check(key, attributes, payload, secret):
    """Validates one event; returns its output line."""
    try:
        data = weir_events.validate(attributes, payload)
    except Exception as e:  # jsonschema.ValidationError, ValueError, json.JSONDecodeError
        raise Invalid(f"{type(e).__name__}: {e}") from None
    if key != attributes["ce-subject"]:
        raise Invalid(f"entry key {key!r} is not the event's subject {attributes['ce-subject']!r}")
    if secret is not None:
        if "ce-signature" not in attributes:
            raise Invalid("the event is not signed")
        if not weir_events.verify(attributes, payload, secret):
            raise Invalid(f"bad signature (key id {attributes.get('ce-signaturekeyid')!r})")
    return {
        "type": attributes["ce-type"],
        "id": attributes["ce-id"],
        "subject": attributes["ce-subject"],
        "data": data,
    }


def read(args):
    client = connect(args.url)
    secret = bytes.fromhex(args.secret_hex) if args.secret_hex else None
    consumer = args.consumer or f"py-{os.getpid()}"
    deadline = time.monotonic() + args.timeout
    streams = []
    next_scan = 0.0
    done = 0
    while done < args.count:
        left = deadline - time.monotonic()
        if left <= 0:
            fail(f"only {done} of {args.count} events arrived on {args.topic} within {args.timeout} s")
        # Partitions appear as keys are first published to: look again (twice a second) until
        # all are known.
        if len(streams) < args.partitions_hint and time.monotonic() >= next_scan:
            next_scan = time.monotonic() + 0.5
            known = set(streams)
            for stream in partition_streams(client, args.prefix, args.topic):
                if stream not in known:
                    ensure_group(client, stream, args.group)
                    streams.append(stream)
        if not streams:
            time.sleep(0.1)
            continue
        block = max(1, int(min(left, 1.0) * 1000))
        reply = client.xreadgroup(
            args.group,
            consumer,
            {stream: ">" for stream in streams},
            count=min(64, args.count - done),
            block=block,
        )
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                if done >= args.count:
                    break  # left pending for this consumer: read more than asked
                where = f"{stream.decode()} {entry_id.decode()}"
                try:
                    line = check(*decode_entry(fields), secret)
                except Invalid as e:
                    fail(f"invalid event at {where}: {e}")
                print(json.dumps(line, sort_keys=True), flush=True)
                client.xack(stream, args.group, entry_id)
                done += 1


def product_added(args):
    product_id = args.product_id or str(uuid.uuid4())
    data = {
        "product_id": product_id,
        "sku": args.sku,
        "name": args.name,
        "price": {"amount": args.amount, "currency": args.currency},
    }
    return weir_events.event("product_added", product_id, data, source=args.source)


def publish(args):
    if not args.unsigned and not (args.key_id and args.secret_hex):
        fail("publish needs --key-id and --secret-hex (or --unsigned)")
    attributes, payload = product_added(args)
    weir_events.validate(attributes, payload)
    if not args.unsigned:
        weir_events.sign(attributes, payload, args.key_id, bytes.fromhex(args.secret_hex))
    key = attributes["ce-subject"]
    stream = stream_name(args.prefix, args.topic, partition_of(key, args.partitions))
    # Weir's field order: the key, the headers, the payload last.
    fields = {KEY_FIELD: key.encode()}
    for name, value in sorted(attributes.items()):
        fields[HEADER_PREFIX + name.encode()] = value.encode()
    fields[PAYLOAD_FIELD] = payload
    entry = connect(args.url).xadd(stream, fields)
    line = {"id": attributes["ce-id"], "subject": key, "stream": stream, "entry": entry.decode()}
    print(json.dumps(line, sort_keys=True), flush=True)


def partition(args):
    for key in args.keys:
        print(json.dumps({"key": key, "partition": partition_of(key, args.partitions)}), flush=True)


def fail(message):
    print(f"redis_client.py: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)

    def common(c):
        c.add_argument("--url", default="redis://127.0.0.1:6379")
        c.add_argument("--prefix", default="weir", help="Weir's key prefix (Options::prefix)")
        c.add_argument("--topic", required=True)

    r = commands.add_parser("read", help="read N events as a consumer group of our own")
    common(r)
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--group", default="python-reader")
    r.add_argument("--consumer", help="consumer name in the group (default py-<pid>)")
    r.add_argument("--secret-hex", help="also verify each event's signature with this secret")
    r.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for N events")
    r.add_argument(
        "--partitions",
        dest="partitions_hint",
        type=int,
        default=16,
        help="stop looking for new partition streams once this many are known",
    )
    r.set_defaults(run=read)

    w = commands.add_parser("publish", help="publish one product_added event")
    common(w)
    w.add_argument("--partitions", type=int, default=16, help="Weir's Options::partitions")
    w.add_argument("--key-id")
    w.add_argument("--secret-hex")
    w.add_argument("--unsigned", action="store_true", help="publish without a signature")
    w.add_argument("--source", default="python-producer")
    w.add_argument("--product-id", help="the subject (default: a new UUID)")
    w.add_argument("--sku", default="PY-1")
    w.add_argument("--name", default="Python widget")
    w.add_argument("--amount", type=int, default=1999)
    w.add_argument("--currency", default="EUR")
    w.set_defaults(run=publish)

    k = commands.add_parser("partition", help="print each key's partition, as Weir computes it")
    k.add_argument("--partitions", type=int, default=16)
    k.add_argument("keys", nargs="+")
    k.set_defaults(run=partition)
    return p


def main():
    args = parser().parse_args()
    if args.command != "partition":
        try:
            import jsonschema  # noqa: F401
            import redis  # noqa: F401
        except ImportError as e:
            fail(f"{e}; install it with: python3 -m pip install redis jsonschema")
    args.run(args)


if __name__ == "__main__":
    main()

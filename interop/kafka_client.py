#!/usr/bin/env python3
"""Weir's events on Kafka through the seeds' own Python client, confluent-kafka (librdkafka),
as a service outside Weir would use it: the CloudEvents Kafka binding in binary mode (``ce_*``
headers and ``content-type``, the data as the record value, the subject as the record key).

    read     reads N of Weir's events with a plain consumer group from the earliest offset,
             validates each (interop/weir_events.py: attributes, data against schemas/, and the
             signature when --secret-hex is given) and prints one JSON line per event. Exits 1
             on the first invalid event, saying what is wrong with it.
    publish  publishes one product_added event, signed as Weir's keyring signs (or --unsigned),
             partitioned like Weir (murmur2_random) with acks=all, and prints it as a JSON line.

Used by crates/bus-kafka/tests/interop.rs; run from anywhere as
``python3 interop/kafka_client.py read --bootstrap 127.0.0.1:9092 --topic weir.orders --count 3``.
"""

import argparse
import ctypes
import ctypes.util
import json
import sys
import time
import uuid

MISSING = 3
PIP = "python3 -m pip install 'confluent-kafka>=2.12,<3' 'jsonschema>=4,<5'"

try:
    import confluent_kafka
    import jsonschema  # noqa: F401 -- weir_events.validate imports it; fail here, early and clearly
except ImportError as missing:
    print(f"missing Python module {missing.name}: run {PIP}", file=sys.stderr)
    sys.exit(MISSING)

import weir_events


def fail(message):
    print(f"kafka_client: {message}", file=sys.stderr)
    sys.exit(1)


def attributes_of(headers):
    """The binding's record headers as Weir's attribute names: ``ce_X`` becomes ``ce-X``;
    ``content-type`` and every other header stay as they are. A null value reads as empty."""
    attributes = {}
    for name, value in headers or []:
        if name.startswith("ce_"):
            name = "ce-" + name[len("ce_"):]
        attributes[name] = (value or b"").decode("utf-8", errors="replace")
    return attributes


def headers_of(attributes):
    """Weir's attributes as the binding's record headers: ``ce-X`` travels as ``ce_X``."""
    return [
        ("ce_" + name[len("ce-"):] if name.startswith("ce-") else name, value.encode())
        for name, value in attributes.items()
    ]


class Partitioner:
    """librdkafka's own ``murmur2_random`` partitioner — the function a producer configured
    with ``partitioner=murmur2_random`` calls — taken from the very library confluent-kafka
    loaded, so that "the partition librdkafka picks for a key" is librdkafka's answer, not a
    reimplementation of it."""

    def __init__(self):
        path = next(
            (line.split()[-1] for line in open("/proc/self/maps") if "librdkafka" in line.split()[-1]),
            None,
        ) or ctypes.util.find_library("rdkafka")
        if not path:
            fail("cannot find the librdkafka that confluent_kafka loaded, to ask its partitioner")
        function = ctypes.CDLL(path).rd_kafka_msg_partitioner_murmur2_random
        function.restype = ctypes.c_int32
        function.argtypes = [
            ctypes.c_void_p,  # the topic: unused for a non-null key
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.function = function

    def __call__(self, key, partitions):
        return self.function(None, key, len(key), partitions, None, None)


def read(args):
    secret = bytes.fromhex(args.secret_hex) if args.secret_hex else None
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group or f"python-reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            # tansu wakes a waiting fetch only at its deadline: keep it short.
            "fetch.wait.max.ms": 100,
        }
    )
    try:
        metadata = consumer.list_topics(args.topic, timeout=10)
        topic = metadata.topics.get(args.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            fail(f"topic {args.topic} is not on the broker at {args.bootstrap}: {topic and topic.error}")
        partitions = len(topic.partitions)
        partition_of = Partitioner()
        consumer.subscribe([args.topic])
        deadline = time.monotonic() + args.timeout
        read = 0
        while read < args.count:
            if time.monotonic() > deadline:
                fail(f"read {read} of {args.count} events of {args.topic} within {args.timeout} s")
            record = consumer.poll(0.2)
            if record is None:
                continue
            if record.error():
                fail(f"consuming {args.topic}: {record.error()}")
            where = f"{args.topic} partition {record.partition()} offset {record.offset()}"
            attributes = attributes_of(record.headers())
            payload = record.value() or b""
            try:
                data = weir_events.validate(attributes, payload)
            except jsonschema.ValidationError as invalid:
                at = "/".join(map(str, invalid.absolute_path)) or "the top"
                fail(f"invalid event at {where}: its data breaks its schema at {at}: {invalid.message}")
            except Exception as invalid:  # json and ValueError alike: not a valid event
                fail(f"invalid event at {where}: {type(invalid).__name__}: {invalid}")
            if secret is not None and not weir_events.verify(attributes, payload, secret):
                fail(f"the signature of the event at {where} does not verify: {attributes!r}")
            key = record.key() or b""
            print(
                json.dumps(
                    {
                        "type": attributes["ce-type"],
                        "id": attributes["ce-id"],
                        "subject": attributes["ce-subject"],
                        "data": data,
                        "partition": record.partition(),
                        "offset": record.offset(),
                        "key": key.decode("utf-8", errors="replace"),
                        "murmur2_partition": partition_of(key, partitions),
                        "verified": secret is not None,
                    }
                ),
                flush=True,
            )
            read += 1
    finally:
        consumer.close()


def publish(args):
    product_id = str(uuid.uuid4())
    data = {
        "product_id": product_id,
        "sku": f"py-{product_id[:8]}",
        "name": "Python kettle",
        "price": {"amount": 2999, "currency": "EUR"},
    }
    attributes, payload = weir_events.event("product_added", product_id, data, source="python-producer")
    if not args.unsigned:
        weir_events.sign(attributes, payload, args.key_id, bytes.fromhex(args.secret_hex))
    weir_events.validate(attributes, payload)
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            # Weir's partitioner (the Java client's): one key, one partition, whoever produces it.
            "partitioner": "murmur2_random",
            # One record per batch: tansu mishandles batches of several records.
            "batch.num.messages": 1,
        }
    )
    delivered = {}

    def on_delivery(error, record):
        delivered["error"] = error
        delivered["record"] = record

    producer.produce(
        args.topic,
        key=product_id.encode(),
        value=payload,
        headers=headers_of(attributes),
        on_delivery=on_delivery,
    )
    left = producer.flush(args.timeout)
    if left or "record" not in delivered:
        fail(f"the event was not acknowledged by {args.bootstrap} within {args.timeout} s")
    if delivered["error"] is not None:
        fail(f"publishing to {args.topic}: {delivered['error']}")
    record = delivered["record"]
    print(
        json.dumps(
            {
                "type": attributes["ce-type"],
                "id": attributes["ce-id"],
                "subject": attributes["ce-subject"],
                "data": data,
                "partition": record.partition(),
                "offset": record.offset(),
                "signed": not args.unsigned,
            }
        ),
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    reader = commands.add_parser("read", help="read and validate N of Weir's events")
    reader.add_argument("--bootstrap", required=True, help="HOST:PORT of a broker")
    reader.add_argument("--topic", required=True, help="the Kafka topic (with Weir's prefix)")
    reader.add_argument("--count", required=True, type=int)
    reader.add_argument("--group", help="the consumer group (default: a new one)")
    reader.add_argument("--secret-hex", help="verify every event's signature with this secret")
    reader.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the N events")
    reader.set_defaults(run=read)

    publisher = commands.add_parser("publish", help="publish one signed product_added event")
    publisher.add_argument("--bootstrap", required=True, help="HOST:PORT of a broker")
    publisher.add_argument("--topic", required=True, help="the Kafka topic (with Weir's prefix)")
    publisher.add_argument("--key-id", required=True, help="the id of the signing key")
    publisher.add_argument("--secret-hex", required=True, help="the signing key's secret, hex")
    publisher.add_argument("--unsigned", action="store_true", help="leave the signature out")
    publisher.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the ack")
    publisher.set_defaults(run=publish)

    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()

"""Weir's events on RabbitMQ as a client outside Weir sees them, with pika.

    read    --url URL --prefix P --topic T --count N [--secret-hex S] [--timeout SECONDS]
    publish --url URL --prefix P --topic T --key-id K --secret-hex S [--partitions N]
            [--variant signed|unsigned|garbage] [--subject ID]

``read`` consumes the topic's log (a RabbitMQ stream that keeps every message of the topic) from
its first message, skips the adapter's own markers, maps the CloudEvents AMQP binding's
``cloudEvents:X`` headers back to ``ce-X``, validates each event with ``weir_events.validate``
(and checks its signature when given the secret) and prints one JSON line per event: type, id,
subject, data. It exits with status 1 and a message on the first invalid event, or when fewer
than N events arrive in time.

``publish`` sends one ``product_added`` event in binary mode to the topic's exchange, routed to
the partition Weir's consumers read it from (FNV-1a of the subject modulo the partition count),
persistent, mandatory, with a publisher confirm; it prints the event's id and subject as JSON.
``--variant unsigned`` leaves the signature off and ``garbage`` sends a body that is not JSON:
both are for Weir to dead-letter.

Names and rules: the RabbitMQ crate's documentation, "Clients outside Weir".
"""

import argparse
import json
import sys
import time
import uuid

import weir_events

CE_WIRE = "cloudEvents:"
CE_WIRE_JMS = "cloudEvents_"
CONTROL_HEADER = "weir-control"


def fnv1a64(text):
    value = 0xCBF29CE484222325
    for byte in text.encode():
        value ^= byte
        value = (value * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def exchange_name(prefix, topic):
    """The topic's exchange: the topic's first 80 bytes and the hash of all of it."""
    return f"{prefix}.t.{topic[:80]}.{fnv1a64(topic):016x}"


def log_name(prefix, topic):
    return exchange_name(prefix, topic) + ".log"


def partition_of(key, partitions):
    return fnv1a64(key) % max(partitions, 1)


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def connect(url):
    import pika

    try:
        return pika.BlockingConnection(pika.URLParameters(url))
    except Exception as e:  # pika raises several unrelated types here
        fail(f"cannot connect to RabbitMQ at {url}: {e!r}")


def text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def attributes_of(properties):
    """Binary-mode attributes under Weir's names: ``cloudEvents:X`` → ``ce-X``, the
    content-type property → ``content-type``; the adapter's and the broker's headers left out."""
    attributes = {}
    for name, value in (properties.headers or {}).items():
        for wire in (CE_WIRE, CE_WIRE_JMS):
            if name.startswith(wire):
                attributes["ce-" + name[len(wire):]] = text(value)
    if properties.content_type is not None:
        attributes["content-type"] = properties.content_type
    return attributes


def read(args):
    import pika.exceptions

    secret = bytes.fromhex(args.secret_hex) if args.secret_hex else None
    connection = connect(args.url)
    channel = connection.channel()
    log = log_name(args.prefix, args.topic)
    try:
        channel.queue_declare(log, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        fail(f"topic {args.topic!r} has no log {log!r} under prefix {args.prefix!r}: {e.reply_text}")
    # A stream is read with a prefetch and acks (they return credit), from an offset.
    channel.basic_qos(prefetch_count=256)
    deadline = time.monotonic() + args.timeout
    count = 0
    for method, properties, body in channel.consume(
        log, arguments={"x-stream-offset": "first"}, inactivity_timeout=0.5
    ):
        if time.monotonic() > deadline:
            fail(f"only {count} of {args.count} events of {args.topic!r} arrived within {args.timeout} s")
        if method is None:
            continue
        channel.basic_ack(method.delivery_tag)
        if CONTROL_HEADER in (properties.headers or {}):
            continue
        attributes = attributes_of(properties)
        try:
            data = weir_events.validate(attributes, body)
        except Exception as e:
            fail(f"invalid event at offset {(properties.headers or {}).get('x-stream-offset')}: {e}")
        if secret is not None and not weir_events.verify(attributes, body, secret):
            fail(f"event {attributes.get('ce-id')} has no valid signature")
        line = {
            "type": attributes["ce-type"],
            "id": attributes["ce-id"],
            "subject": attributes["ce-subject"],
            "data": data,
        }
        print(json.dumps(line, separators=(",", ":")), flush=True)
        count += 1
        if count == args.count:
            break
    channel.cancel()
    connection.close()


def publish(args):
    import pika
    import pika.exceptions

    subject = args.subject or str(uuid.uuid4())
    data = {
        "product_id": subject,
        "sku": "PY-1",
        "name": "Made in Python",
        "price": {"amount": 1999, "currency": "EUR"},
    }
    attributes, body = weir_events.event("product_added", subject, data)
    if args.variant != "unsigned":
        weir_events.sign(attributes, body, args.key_id, bytes.fromhex(args.secret_hex))
    if args.variant == "garbage":
        body = b"\xff this is not JSON"
    headers = {CE_WIRE + name[len("ce-"):]: value for name, value in attributes.items() if name.startswith("ce-")}
    properties = pika.BasicProperties(
        content_type=attributes["content-type"],
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=attributes["ce-id"],
        headers=headers,
    )
    exchange = exchange_name(args.prefix, args.topic)
    routing_key = str(partition_of(subject, args.partitions))
    connection = connect(args.url)
    channel = connection.channel()
    try:
        channel.exchange_declare(exchange, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        fail(f"topic {args.topic!r} has no exchange {exchange!r} yet (no Weir process used it): {e.reply_text}")
    channel.confirm_delivery()
    try:
        channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
    except pika.exceptions.UnroutableError:
        fail(f"the broker routed the event to no queue of {exchange!r} (routing key {routing_key})")
    except pika.exceptions.NackError:
        fail("the broker refused the event (negative publisher confirm)")
    connection.close()
    line = {"id": attributes["ce-id"], "subject": subject, "routing_key": routing_key, "variant": args.variant}
    print(json.dumps(line, separators=(",", ":")), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("read", "publish"):
        command = commands.add_parser(name)
        command.add_argument("--url", required=True, help="amqp://user:password@host:port/vhost")
        command.add_argument("--prefix", required=True, help="the Weir bus's namespace prefix")
        command.add_argument("--topic", required=True)
    reader = commands.choices["read"]
    reader.add_argument("--count", type=int, required=True)
    reader.add_argument("--secret-hex", help="also check each event's signature with this secret")
    reader.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the events")
    producer = commands.choices["publish"]
    producer.add_argument("--key-id", required=True)
    producer.add_argument("--secret-hex", required=True)
    producer.add_argument("--partitions", type=int, default=4, help="the Weir bus's partition count")
    producer.add_argument("--variant", choices=("signed", "unsigned", "garbage"), default="signed")
    producer.add_argument("--subject", help="the product id (default: a new UUID)")
    args = parser.parse_args()
    if args.command == "read":
        read(args)
    else:
        publish(args)


if __name__ == "__main__":
    main()

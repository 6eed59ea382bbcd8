#!/usr/bin/env python3
"""Reads a Pipeline's `encoding: json` lists with nothing but the standard library: it
speaks RESP (the Redis protocol) itself over a socket, sends LRANGE, and parses each stored
value with json. It shows that a json-encoded Pipeline needs no Ferry code to read.

    python3 resp_reader.py HOST PORT KEY_PREFIX SOURCE...

KEY_PREFIX is `<redis.keyPrefix>:list:`. Prints {source: [{"ts", "values", "text"}, ...]},
newest first, as JSON on stdout.
"""
import json
import socket
import sys


def command(*args):
    """One RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def read_reply(stream):
    """One RESP2 reply: simple string, error, integer, bulk string or array."""
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [read_reply(stream) for _ in range(count)]
    raise RuntimeError("unexpected RESP type %r" % kind)


def main():
    host, port, prefix, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    with socket.create_connection((host, port), timeout=10) as sock:
        stream = sock.makefile("rb")
        result = {}
        for source in sources:
            sock.sendall(command("LRANGE", prefix + source, 0, -1))
            values = read_reply(stream)
            result[source] = [json.loads(value.decode("utf-8")) for value in values]
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A service in the demo's chain (gateway -> A -> B -> C): it calls the next service through its own
outbound Envoy, as an application would, passing on the Authorization and the W3C traceparent it
received, and answers with the next service's reply. Baton, beside that Envoy, swaps the token.

    python3 relay.py NAME ENVOY_PORT NEXT_HOST

It calls NEXT_HOST, or the host in the request's `x-relay-NAME-calls` header (so the demo can point
B at another destination). For each request it prints one JSON line on stdout with what it received,
the Authorization included: the demo decodes those tokens to show each hop. A demo stand-in, not a
real service; it never logs a header value on stderr. When it listens it prints
{"ready": true, "port": N} first, like echo.py. Standard library only."""

import json
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, ENVOY_PORT, NEXT_HOST = sys.argv[1], int(sys.argv[2]), sys.argv[3]
FORWARDED = ("authorization", "traceparent", "tracestate")


class Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        received = {name.lower(): value for name, value in self.headers.items()}
        print(json.dumps({"hop": NAME, "path": self.path, "headers": received}), flush=True)
        host = received.get(f"x-relay-{NAME.lower()}-calls", NEXT_HOST)
        request = urllib.request.Request(f"http://127.0.0.1:{ENVOY_PORT}{self.path}", headers={"Host": host})
        for name, value in received.items():
            if name in FORWARDED or name.startswith("x-relay-"):
                request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                status, body = reply.status, reply.read()
        except urllib.error.HTTPError as refused:  # the next hop's Envoy or Baton said no: pass it back
            status, body = refused.code, refused.read()
        except OSError as e:
            status, body = 502, json.dumps({"hop": NAME, "error": str(e)}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        sys.stderr.write("relay %s: %s\n" % (NAME, format % args))


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    server.daemon_threads = True
    print(json.dumps({"ready": True, "port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

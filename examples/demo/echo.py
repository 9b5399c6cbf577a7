#!/usr/bin/env python3
"""The demo's upstream: answers every request with JSON of what it received (method, path, headers),
so the demo can show which Authorization header reached the service behind Envoy.

    python3 echo.py [PORT]      # PORT 0 (the default) picks a free port

When it listens it prints one JSON line on stdout, {"ready": true, "port": N}, like `baton sts`, so
the caller learns the port without racing another process for it. Standard library only."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's upstream connections expect

    def echo(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)  # drain it so the connection can be reused
        headers = {}
        for name, value in self.headers.items():
            # Lower-case names, and a repeated header joined, so a second Authorization would show.
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = echo

    def log_message(self, format, *args):
        # The access log goes to stderr, which the demo keeps in a file; never log header values.
        sys.stderr.write("echo: %s\n" % (format % args))


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Echo)
    server.daemon_threads = True
    print(json.dumps({"ready": True, "port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

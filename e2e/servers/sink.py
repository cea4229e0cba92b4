#!/usr/bin/env python3
"""A small HTTP server for end-to-end tests, standing in for the outside world a
delivery cycle talks to: it serves files (a release artifact, a git repository over
git's "dumb" HTTP protocol) and records every PUT and POST (a deploy, a webhook
notification) so a test can read what arrived.

    sink.py --root DIR --host 192.0.2.2 --port 0 --ready-file FILE

GET  /_records   every recorded request, as a JSON list
GET  /<path>     the file at DIR/<path>
PUT  /<path>     recorded (method, path, headers, body size, body text if small), and
                 stored at DIR/<path> so a GET returns it (a deployed app answers)
POST /<path>     recorded likewise
The chosen port is written to --ready-file once the server listens.
"""

import argparse
import json
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

RECORDS = []
LOCK = threading.Lock()
# Bodies are recorded as text only when small; a deployed war is recorded by size.
TEXT_LIMIT = 64 * 1024


class Handler(SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/_records":
            with LOCK:
                body = json.dumps(RECORDS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "size": len(body),
        }
        if len(body) <= TEXT_LIMIT:
            entry["body"] = body.decode("utf-8", errors="replace")
        if self.command == "PUT":
            # A deploy: what was PUT can be fetched back with GET, like a deployed app.
            target = os.path.realpath(os.path.join(os.getcwd(), self.path.lstrip("/").split("?")[0]))
            if target.startswith(os.getcwd() + os.sep):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(body)
        with LOCK:
            RECORDS.append(entry)
        reply = json.dumps({"recorded": len(RECORDS)}).encode()
        self.send_response(201 if self.command == "PUT" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_PUT = record
    do_POST = record

    def log_message(self, fmt, *args):
        print("sink: " + fmt % args, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    os.chdir(args.root)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.ready_file)
    server.serve_forever()


if __name__ == "__main__":
    main()

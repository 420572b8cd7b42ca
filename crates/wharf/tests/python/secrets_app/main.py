"""The app of crates/wharf/tests/secrets.rs's Python check, run inside a Wharf instance (the
Python image of wharf-testsupport): reads its secrets the way a Cloud Run app does, an env var
and a file, and answers them as JSON on any GET."""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with open("/secrets/key.txt", encoding="utf-8") as key_file:
            body = json.dumps({"env": os.environ.get("DB_PASSWORD"), "file": key_file.read()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()

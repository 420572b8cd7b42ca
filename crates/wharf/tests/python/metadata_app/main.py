"""The app of crates/wharf/tests/metadata.rs, run inside a Wharf instance (the Python image
of wharf-testsupport): what a Cloud Run service does with Google's auth library.

GET /identity?target=URL  google.auth.default() (credentials refreshed through the metadata
                          server), then an ID token for URL from google.oauth2.id_token.
                          fetch_id_token, used to call URL; says what it got and saw.
GET /metadata?path=P[&flavor=1]  a raw request to the metadata server, with or without
                          Metadata-Flavor: Google.
GET / (anything else)     who this is, and the Authorization header the request arrived with.
"""

import json
import os
import traceback
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def metadata(path, flavor):
    request = urllib.request.Request("http://metadata.google.internal" + path)
    if flavor:
        request.add_header("Metadata-Flavor", "Google")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return {"status": response.status, "body": response.read().decode(),
                    "flavor": response.headers.get("Metadata-Flavor")}
    except urllib.error.HTTPError as error:
        return {"status": error.code, "body": error.read().decode(),
                "flavor": error.headers.get("Metadata-Flavor")}


def identity(target):
    import google.auth
    import google.auth.jwt
    import google.auth.transport.requests
    import google.oauth2.id_token
    import requests

    request = google.auth.transport.requests.Request()
    credentials, project = google.auth.default()
    credentials.refresh(request)
    token = google.oauth2.id_token.fetch_id_token(request, target)
    claims = google.auth.jwt.decode(token, verify=False)
    called = requests.get(target, headers={"Authorization": "Bearer " + token}, timeout=60)
    return {
        "project": project,
        "email": credentials.service_account_email,
        "accessToken": credentials.token,
        "idToken": token,
        "idTokenEmail": claims["email"],
        "idTokenAudience": claims["aud"],
        "status": called.status_code,
        "body": called.text,
    }


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        status = 200
        try:
            if url.path == "/identity":
                body = identity(query["target"])
            elif url.path == "/metadata":
                body = metadata(query["path"], query.get("flavor") == "1")
            else:
                body = {"service": os.environ.get("K_SERVICE"),
                        "authorization": self.headers.get("Authorization")}
        except Exception:
            status, body = 500, {"error": traceback.format_exc()}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()

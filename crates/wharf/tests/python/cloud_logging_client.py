"""Google's Cloud Logging client (google-cloud-logging, HTTP transport) lists Wharf's log
entries with a filter, unchanged: only the endpoint and the token are Wharf's."""

import os
import sys

from google.api_core.client_options import ClientOptions
from google.cloud import logging as cloud_logging
from google.oauth2.credentials import Credentials

client = cloud_logging.Client(
    project=os.environ["WHARF_PROJECT"],
    credentials=Credentials(token=os.environ["WHARF_TOKEN"]),
    client_options=ClientOptions(api_endpoint=os.environ["WHARF_API"]),
    _use_grpc=False,
)
service = os.environ["WHARF_SERVICE"]
errors = list(
    client.list_entries(
        filter_=f"resource.type=cloud_run_revision AND resource.labels.service_name={service} AND severity>=ERROR",
        order_by=cloud_logging.DESCENDING,
        max_results=20,
    )
)
for entry in errors:
    payload = entry.payload if isinstance(entry.payload, str) else entry.payload.get("message")
    print(f"{entry.severity} {entry.resource.type} {entry.resource.labels['service_name']} {payload}")
if not errors:
    sys.exit("no ERROR entries came back")
# A filter the server cannot parse is a 400 the client raises, naming the column.
try:
    list(client.list_entries(filter_="severity>=LOUD", max_results=1))
except Exception as e:  # google.api_core.exceptions.BadRequest
    print(f"refused: {e}")

"""Google's own Cloud Run client library, unchanged, against Wharf's API.

Run by tests/python_client.rs with WHARF_API (http://host:port), WHARF_TOKEN and WHARF_IMAGE set.
Creates, gets, lists, updates and deletes a service, polling each operation to completion.
"""

import os
import sys

from google.api_core.client_options import ClientOptions
from google.cloud import run_v2
from google.oauth2.credentials import Credentials

api = os.environ["WHARF_API"]
token = os.environ["WHARF_TOKEN"]
image = os.environ["WHARF_IMAGE"]

client = run_v2.ServicesClient(
    transport="rest",
    client_options=ClientOptions(api_endpoint=api),
    credentials=Credentials(token=token),
)
parent = "projects/pyproj/locations/us-central1"
name = f"{parent}/services/py-hello"

service = run_v2.Service(
    template=run_v2.RevisionTemplate(
        containers=[run_v2.Container(image=image, env=[run_v2.EnvVar(name="FROM", value="python")])],
        max_instance_request_concurrency=10,
    )
)
operation = client.create_service(parent=parent, service=service, service_id="py-hello")
created = operation.result(timeout=120)
assert created.name == name, created.name
assert created.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED, created.terminal_condition
assert created.uri.startswith("http://py-hello-") and ".us-central1." in created.uri, created.uri
print("created", created.latest_ready_revision)

got = client.get_service(name=name)
assert got.generation == 1, got.generation
assert got.template.containers[0].env[0].value == "python"
assert got.latest_ready_revision.endswith("/revisions/py-hello-00001-" + got.latest_ready_revision[-3:])
print("got", got.uri)

listed = list(client.list_services(parent=parent))
assert [s.name for s in listed] == [name], [s.name for s in listed]
print("listed", len(listed))

got.template.containers[0].env[0].value = "python-2"
operation = client.update_service(service=got)
updated = operation.result(timeout=120)
assert updated.generation == 2, updated.generation
assert "py-hello-00002-" in updated.latest_ready_revision, updated.latest_ready_revision
print("updated", updated.latest_ready_revision)

revisions = run_v2.RevisionsClient(
    transport="rest", client_options=ClientOptions(api_endpoint=api), credentials=Credentials(token=token)
)
names = [r.name for r in revisions.list_revisions(parent=name)]
assert len(names) == 2, names
print("revisions", len(names))

try:
    client.get_service(name=f"{parent}/services/does-not-exist")
    sys.exit("expected NotFound")
except Exception as e:  # google.api_core.exceptions.NotFound
    assert type(e).__name__ == "NotFound", repr(e)
    print("not found ok")

operation = client.delete_service(name=name)
operation.result(timeout=120)
assert list(client.list_services(parent=parent)) == []
print("deleted")

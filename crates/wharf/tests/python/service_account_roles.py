"""Role boundaries seen through Google's own libraries: a service-account key file made by
`wharf iam service-accounts keys create`, loaded with google-auth, used by Google's Cloud Run
client (which sends a self-signed JWT) and exchanged at Wharf's token endpoint (RFC 7523).

Run by tests/python_client.rs with WHARF_API, WHARF_TOKEN (the owner's), WHARF_IMAGE,
WHARF_KEY_FILE (a key of WHARF_SA) set.
"""

import datetime
import json
import os
import sys

import google.auth.exceptions
import requests
from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth.transport.requests import AuthorizedSession, Request
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.oauth2 import credentials as oauth2_credentials
from google.oauth2 import service_account

api = os.environ["WHARF_API"]
owner_token = os.environ["WHARF_TOKEN"]
image = os.environ["WHARF_IMAGE"]
key_file = os.environ["WHARF_KEY_FILE"]
sa_email = os.environ["WHARF_SA"]
project = "pyiam"
parent = f"projects/{project}/locations/us-central1"
name = f"{parent}/services/iam-hello"


def without_google_lookups(creds):
    # google-auth looks up a service account's "regional access boundary" at
    # iamcredentials.googleapis.com after each refresh. Wharf is not Google: give the
    # credentials a boundary so that no request leaves for Google during the test.
    far = datetime.datetime.utcnow() + datetime.timedelta(days=1)
    return creds._set_regional_access_boundary({"encodedLocations": "0x0", "expiry": far})


def sa_credentials():
    creds = service_account.Credentials.from_service_account_file(key_file)
    return without_google_lookups(creds)


def client(creds):
    return run_v2.ServicesClient(transport="rest", client_options=ClientOptions(api_endpoint=api), credentials=creds)


owner = oauth2_credentials.Credentials(token=owner_token)
owner_client = client(owner)
owner_http = AuthorizedSession(owner)


def set_project_role(role):
    """Replaces the project's policy with one binding of the account (Resource Manager v1)."""
    url = f"{api}/v1/projects/{project}"
    current = owner_http.post(f"{url}:getIamPolicy", json={}).json()
    policy = {"bindings": [{"role": role, "members": [f"serviceAccount:{sa_email}"]}], "etag": current["etag"]}
    answer = owner_http.post(f"{url}:setIamPolicy", json={"policy": policy})
    assert answer.status_code == 200, answer.text


# The key file is Google's format, pointing at Wharf's token endpoint.
info = json.load(open(key_file))
assert info["type"] == "service_account" and info["client_email"] == sa_email, info.keys()
assert info["token_uri"] == f"{api}/token", info["token_uri"]

# The JWT-bearer grant: google-auth signs an assertion, Wharf answers with an access token.
granted = sa_credentials()
granted.refresh(Request())
assert granted.token.startswith("ya29."), granted.token
print("token endpoint ok")

operation = owner_client.create_service(
    parent=parent,
    service=run_v2.Service(template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=image)])),
    service_id="iam-hello",
)
operation.result(timeout=120)
print("created")

# Google's client with the key file: it sends a self-signed JWT.
sa_client = client(sa_credentials())
try:
    sa_client.get_service(name=name)
    sys.exit("expected Forbidden (403) before any binding")
except exceptions.Forbidden as e:
    assert "run.services.get" in str(e), str(e)
    print("403 before binding")

# An access token from the token endpoint is refused the same way.
token_client = client(oauth2_credentials.Credentials(token=granted.token))
try:
    token_client.get_service(name=name)
    sys.exit("expected Forbidden (403) for the access token")
except exceptions.Forbidden:
    pass

set_project_role("roles/run.invoker")
try:
    list(sa_client.list_services(parent=parent))
    sys.exit("expected Forbidden (403): run.invoker cannot list")
except exceptions.Forbidden as e:
    assert "run.services.list" in str(e), str(e)
    print("invoker cannot list")

set_project_role("roles/run.viewer")
got = sa_client.get_service(name=name)
assert got.name == name, got.name
assert [s.name for s in sa_client.list_services(parent=parent)] == [name]
assert token_client.get_service(name=name).name == name
print("200 after run.viewer")

set_project_role("roles/run.developer")
held = sa_client.test_iam_permissions(
    request=iam_policy_pb2.TestIamPermissionsRequest(
        resource=name, permissions=["run.services.update", "run.services.setIamPolicy"]
    )
)
assert list(held.permissions) == ["run.services.update"], held.permissions
try:
    sa_client.set_iam_policy(
        request=iam_policy_pb2.SetIamPolicyRequest(
            resource=name,
            policy=policy_pb2.Policy(bindings=[policy_pb2.Binding(role="roles/run.invoker", members=["allUsers"])]),
        )
    )
    sys.exit("expected Forbidden (403): a developer cannot set a policy")
except exceptions.Forbidden as e:
    assert "run.services.setIamPolicy" in str(e), str(e)
    print("developer cannot setIamPolicy")

# The owner sets and reads a service policy through Google's client (etag round trip).
policy = owner_client.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=name))
policy.bindings.append(policy_pb2.Binding(role="roles/run.invoker", members=[f"serviceAccount:{sa_email}"]))
stored = owner_client.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=name, policy=policy))
assert stored.etag != policy.etag and stored.bindings[0].role == "roles/run.invoker", stored
try:
    owner_client.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=name, policy=policy))
    sys.exit("expected Conflict (409 ABORTED): the etag is stale")
except exceptions.Conflict:
    print("stale etag refused")

# A disabled account's credentials stop working at once: self-signed JWT, access token, grant.
answer = owner_http.post(f"{api}/v1/projects/{project}/serviceAccounts/{sa_email}:disable", json={})
assert answer.status_code == 200, answer.text
try:
    client(sa_credentials()).get_service(name=name)
    sys.exit("expected Unauthorized for a disabled account")
except exceptions.Unauthorized as e:
    assert "disabled" in str(e), str(e)
# (A bare access token cannot be refreshed, so google-auth turns the 401 into a RefreshError:
# look at the answer itself.)
answer = requests.get(f"{api}/v2/{name}", headers={"Authorization": f"Bearer {granted.token}"})
assert answer.status_code == 401 and "disabled" in answer.text, answer.text
try:
    sa_credentials().refresh(Request())
    sys.exit("expected RefreshError for a disabled account")
except google.auth.exceptions.RefreshError as e:
    assert "invalid_grant" in str(e), str(e)
print("disabled account refused")

owner_client.delete_service(name=name).result(timeout=120)
print("deleted")

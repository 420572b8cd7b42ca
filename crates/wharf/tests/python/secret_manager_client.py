"""Google's own Secret Manager client library, unchanged, against Wharf's API.

Run by tests/python_client.rs with WHARF_API (http://host:port) and WHARF_TOKEN set; the
secret's bytes come in WHARF_SECRET_VALUE. Creates a secret, adds two versions (the first with
a client-side CRC32C), accesses version 1 and `latest`, lists, disables, destroys, reads and
sets the secret's IAM policy, and deletes the secret.
"""

import os

from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.cloud import secretmanager
from google.iam.v1 import policy_pb2
from google.oauth2.credentials import Credentials

api = os.environ["WHARF_API"]
token = os.environ["WHARF_TOKEN"]
value = os.environ["WHARF_SECRET_VALUE"].encode()


def crc32c(data):
    """CRC-32C (Castagnoli), bit by bit: the checksum Secret Manager's dataCrc32c carries."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value

client = secretmanager.SecretManagerServiceClient(
    transport="rest",
    client_options=ClientOptions(api_endpoint=api),
    credentials=Credentials(token=token),
)
parent = "projects/pyproj"
name = f"{parent}/secrets/py-db-password"

secret = client.create_secret(
    request={"parent": parent, "secret_id": "py-db-password", "secret": {"replication": {"automatic": {}}, "labels": {"team": "db"}}}
)
assert secret.name == name, secret.name
assert secret.labels["team"] == "db", secret.labels
print("created", secret.name)

crc = crc32c(value)
v1 = client.add_secret_version(request={"parent": name, "payload": {"data": value, "data_crc32c": crc}})
assert v1.name == f"{name}/versions/1", v1.name
assert v1.state == secretmanager.SecretVersion.State.ENABLED, v1.state
assert v1.client_specified_payload_checksum
v2 = client.add_secret_version(request={"parent": name, "payload": {"data": b"second-" + value}})
assert v2.name == f"{name}/versions/2", v2.name

first = client.access_secret_version(request={"name": f"{name}/versions/1"})
assert first.payload.data == value
assert first.payload.data_crc32c == crc, (first.payload.data_crc32c, crc)
latest = client.access_secret_version(request={"name": f"{name}/versions/latest"})
assert latest.name == v2.name, latest.name
assert latest.payload.data == b"second-" + value
print("accessed 1 and latest")

try:
    client.add_secret_version(request={"parent": name, "payload": {"data": b"x", "data_crc32c": 1}})
    raise AssertionError("a wrong checksum was accepted")
except exceptions.BadRequest as e:  # HTTP 400, INVALID_ARGUMENT
    assert "dataCrc32c" in str(e), e

names = [s.name for s in client.list_secrets(request={"parent": parent})]
assert names == [name], names
versions = [v.name for v in client.list_secret_versions(request={"parent": name})]
assert versions == [v2.name, v1.name], versions

client.disable_secret_version(request={"name": v2.name})
try:
    client.access_secret_version(request={"name": f"{name}/versions/latest"})
    raise AssertionError("a disabled version was accessed")
except exceptions.BadRequest as e:  # HTTP 400, FAILED_PRECONDITION
    assert "DISABLED" in str(e), e
client.enable_secret_version(request={"name": v2.name})
destroyed = client.destroy_secret_version(request={"name": v1.name})
assert destroyed.state == secretmanager.SecretVersion.State.DESTROYED, destroyed.state
print("disabled, enabled, destroyed")

updated = client.update_secret(
    request={"secret": {"name": name, "labels": {"team": "payments"}}, "update_mask": {"paths": ["labels"]}}
)
assert updated.labels["team"] == "payments", updated.labels

policy = client.get_iam_policy(request={"resource": name})
policy.bindings.add(role="roles/secretmanager.secretAccessor", members=["serviceAccount:app@pyproj.iam.gserviceaccount.com"])
stored = client.set_iam_policy(request={"resource": name, "policy": policy})
assert [b.role for b in stored.bindings] == ["roles/secretmanager.secretAccessor"], stored
print("iam policy set")

client.delete_secret(request={"name": name})
try:
    client.get_secret(request={"name": name})
    raise AssertionError("the deleted secret is still there")
except exceptions.NotFound:
    pass
print("deleted")

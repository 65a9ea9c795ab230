"""A workload using the official Python SPIFFE library (`spiffe` on PyPI,
built on grpcio, i.e. grpc-core) against a Signet agent. Driven by
tests/clients_e2e.rs; prints one result line per command.

  fetch SOCKET             SVID, key/certificate match, bundles
  stream SOCKET N          N distinct SVIDs seen on one open stream
  no-header SOCKET         FetchX509SVID without the security header
  error SOCKET             the error a refused caller gets
  jwt SOCKET AUD           JWT-SVID fetched, validated by the agent and
                           locally against the fetched JWT bundle
  validate SOCKET AUD TOK  the agent's verdict on a token
  oidc KEYS_URL ISS AUD TOK [CAFILE]
  discover ISS AUD TOK CAFILE   (OIDC discovery from the issuer, as relying parties do)
                           PyJWT verifying a token with the OIDC JWKS
                           (https with CAFILE as the only trusted root)
"""
import sys
import threading

import grpc
from cryptography.hazmat.primitives import serialization
import json
import ssl
import urllib.request

import jwt as pyjwt
from spiffe import WorkloadApiClient
from spiffe.svid.jwt_svid import JwtSvid
from spiffe._proto import workload_pb2, workload_pb2_grpc


def fetch(socket):
    client = WorkloadApiClient(socket_path=socket)
    svid = client.fetch_x509_svid()
    leaf = svid.leaf
    pub = lambda k: k.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    matches = pub(leaf.public_key()) == pub(svid.private_key.public_key())
    bundles = client.fetch_x509_bundles()
    tds = sorted(str(b.trust_domain) for b in bundles.bundles) if hasattr(bundles, "bundles") else []
    if not tds:
        b = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        tds = [str(b.trust_domain)] if b is not None else []
    print(f"svid={svid.spiffe_id} chain={len(svid.cert_chain)} key_matches={matches} bundles={','.join(tds)}")


def stream(socket, n):
    client = WorkloadApiClient(socket_path=socket)
    seen = []
    done = threading.Event()
    errors = []

    def on_success(ctx):
        serial = ctx.default_svid.leaf.serial_number
        if serial not in seen:
            seen.append(serial)
        if len(seen) >= n:
            done.set()

    def on_error(e):
        errors.append(e)
        done.set()

    handle = client.stream_x509_contexts(on_success=on_success, on_error=on_error, retry_connect=False)
    done.wait(60)
    handle.cancel()
    print(f"distinct={len(seen)} errors={len(errors)}")


def no_header(socket):
    channel = grpc.insecure_channel(socket)
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    try:
        for _ in stub.FetchX509SVID(workload_pb2.X509SVIDRequest()):
            break
        print("code=OK")
    except grpc.RpcError as e:
        print(f"code={e.code().name}")


def error(socket):
    client = WorkloadApiClient(socket_path=socket)
    try:
        client.fetch_x509_svid()
        print("no error")
    except Exception as e:  # noqa: BLE001 - the library wraps the status
        print(f"error={e}")


def jwt_fetch(socket, audience):
    client = WorkloadApiClient(socket_path=socket)
    svid = client.fetch_jwt_svid(audience={audience})
    validated = client.validate_jwt_svid(svid.token, audience)
    bundles = client.fetch_jwt_bundles()
    bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    local = JwtSvid.parse_and_validate(svid.token, bundle, {audience})
    print(
        f"jwt sub={svid.spiffe_id} validated={validated.spiffe_id} "
        f"local={local.spiffe_id} keys={len(bundle.jwt_authorities)}"
    )


def validate(socket, audience, token):
    client = WorkloadApiClient(socket_path=socket)
    try:
        v = client.validate_jwt_svid(token, audience)
        print(f"valid {v.spiffe_id}")
    except Exception as e:  # noqa: BLE001 - the library wraps the status
        print(f"refused {e}")


def oidc(keys_url, issuer, audience, token, cafile=None):
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    jwks = json.load(urllib.request.urlopen(keys_url, timeout=10, context=context))
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = pyjwt.PyJWKSet.from_dict(jwks)[kid]
    claims = pyjwt.decode(
        token, key.key, algorithms=[key.algorithm_name], audience=audience, issuer=issuer
    )
    print(f"oidc sub={claims['sub']} alg={key.algorithm_name}")


def discover(issuer, audience, token, cafile):
    # What a relying party does: the discovery document under the issuer,
    # then the JWKS it names, with PyJWT's own client.
    context = ssl.create_default_context(cafile=cafile)
    doc = json.load(
        urllib.request.urlopen(
            issuer + "/.well-known/openid-configuration", timeout=10, context=context
        )
    )
    assert doc["issuer"] == issuer, doc
    client = pyjwt.PyJWKClient(doc["jwks_uri"], ssl_context=context)
    key = client.get_signing_key_from_jwt(token)
    claims = pyjwt.decode(
        token, key.key, algorithms=[key.algorithm_name], audience=audience, issuer=issuer
    )
    print(f"discovered sub={claims['sub']} jwks_uri={doc['jwks_uri']}")


if __name__ == "__main__":
    cmd, socket = sys.argv[1], sys.argv[2]
    if cmd == "fetch":
        fetch(socket)
    elif cmd == "stream":
        stream(socket, int(sys.argv[3]))
    elif cmd == "no-header":
        no_header(socket)
    elif cmd == "error":
        error(socket)
    elif cmd == "jwt":
        jwt_fetch(socket, sys.argv[3])
    elif cmd == "validate":
        validate(socket, sys.argv[3], sys.argv[4])
    elif cmd == "oidc":
        oidc(*sys.argv[2:7])
    elif cmd == "discover":
        discover(*sys.argv[2:6])

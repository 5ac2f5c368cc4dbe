"""Access tokens at the edge: every attack is the same 401; Principal and
Header parameters bind; the principal crosses RPC; keys rotate."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from authapp.app import app
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from amoeba import Principal, Unauthorized
from amoeba.auth.keys import KeyFileError, load_keys
from amoeba.auth.passwords import hash_password, needs_rehash, verify_password
from amoeba.auth.tokens import INVALID, AuthConfig, AuthConfigError, TokenVerifier
from amoeba.testing import InProcessHarness, app_fixture


def _pem(key: ed25519.Ed25519PrivateKey) -> tuple[str, str]:
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return priv, pub


NEW, OLD = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
NEW_PRIV, NEW_PUB = _pem(NEW)
OLD_PRIV, OLD_PUB = _pem(OLD)
KEYDIR = Path(tempfile.mkdtemp(prefix="amoeba-auth-test-"))
KEYFILE = KEYDIR / "keys.json"
# Rotation in progress: the new key signs, the old one still verifies.
KEYFILE.write_text(json.dumps({"keys": [
    {"kid": "new", "alg": "EdDSA", "private_pem": NEW_PRIV},
    {"kid": "old", "alg": "EdDSA", "public_pem": OLD_PUB}]}))
SETTINGS = {"auth": {"keys": str(KEYFILE), "issuer": "authapp", "audience": "authapp"}}

client = app_fixture(app, settings=SETTINGS)
# One listener serves every route (in the processes mode each service has its own).
monolith = app_fixture(app, modes=("inprocess",), settings=SETTINGS)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c = {"iss": "authapp", "aud": "authapp", "sub": "alice", "iat": now, "nbf": now,
         "exp": now + 300, "jti": "j1", "roles": ["user"], "sid": "s1", "typ": "access"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def sign(c: dict[str, Any], key: Any = NEW, kid: str = "new", alg: str = "EdDSA") -> str:
    return jwt.encode(c, key, algorithm=alg, headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = b"" if secret is None else hmac.new(secret, head.encode(), hashlib.sha256).digest()
    return head + "." + b64(sig)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _tampered() -> str:
    head, _, sig = sign(claims()).split(".")
    return f"{head}.{b64(json.dumps(claims(sub='mallory', roles=['admin'])).encode())}.{sig}"


def _bad_signature() -> str:
    token = sign(claims())
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")


ATTACKS = {
    "alg_none": lambda: raw_token({"alg": "none", "typ": "JWT", "kid": "new"}, claims(), None),
    "hs256_with_public_key_as_secret": lambda: raw_token(
        {"alg": "HS256", "typ": "JWT", "kid": "new"}, claims(), NEW_PUB.encode()),
    "rs256_foreign_key": lambda: sign(
        claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048), alg="RS256"),
    "bad_signature": _bad_signature,
    "tampered_payload": _tampered,
    "signed_by_unlisted_key": lambda: sign(claims(), ed25519.Ed25519PrivateKey.generate()),
    "expired": lambda: sign(claims(iat=int(time.time()) - 600, nbf=int(time.time()) - 600,
                                   exp=int(time.time()) - 60)),
    "not_yet_valid": lambda: sign(claims(nbf=int(time.time()) + 600)),
    "wrong_audience": lambda: sign(claims(aud="someone-else")),
    "wrong_issuer": lambda: sign(claims(iss="evil")),
    "missing_exp": lambda: sign(claims(exp=None)),
    "missing_sub": lambda: sign(claims(sub=None)),
    "unknown_kid": lambda: sign(claims(), kid="nope"),
    "refresh_token_as_access": lambda: sign(claims(typ="refresh")),
    "garbage": lambda: "not.a.jwt",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_every_bad_token_is_the_same_401(client, attack):
    token = ATTACKS[attack]()
    r = await client.get("/api/me", headers=bearer(token))
    assert r.status == 401, r.body
    assert r.json()["error"]["message"] == INVALID
    assert r.json()["error"]["type"] == "Unauthorized"
    assert r.headers.get("x-request-id")
    # A presented invalid token is never downgraded to anonymous.
    r = await client.get("/api/hello", headers=bearer(token))
    assert r.status == 401 and r.json()["error"]["message"] == INVALID


async def test_valid_token_fills_principal_and_crosses_rpc(client):
    r = await client.get("/api/me", headers=bearer(sign(claims(roles=["user", "admin"]))))
    assert r.status == 200, r.body
    assert r.json() == {"subject": "alice", "roles": ["user", "admin"], "session": "s1",
                        "seen_by": "profiles via front"}
    r = await client.get("/api/admin", headers=bearer(sign(claims(roles=["admin"]))))
    assert r.status == 200
    r = await client.get("/api/admin", headers=bearer(sign(claims())))
    assert r.status == 403


async def test_missing_token_is_401_and_optional_principal_is_none(client):
    r = await client.get("/api/me")
    assert r.status == 401 and r.headers.get("x-request-id")
    assert (await client.get("/api/hello")).json() == {"hello": "anonymous"}
    r = await client.get("/api/hello", headers=bearer(sign(claims(sub="bob"))))
    assert r.json() == {"hello": "bob"}
    # A route without Principal ignores tokens entirely.
    assert (await client.get("/api/open", headers=bearer("junk"))).status == 200


async def test_old_key_verifies_during_rotation(client):
    r = await client.get("/api/me", headers=bearer(sign(claims(sub="old"), key=OLD, kid="old")))
    assert r.status == 200 and r.json()["subject"] == "old"


async def test_header_params_bind_and_are_not_body(client):
    tok = bearer(sign(claims()))
    r = await client.post("/api/orders", json={"qty": 2},
                          headers={**tok, "Idempotency-KEY": "k-42", "x-attempt": "3"})
    assert r.status == 201, r.body
    assert r.json() == {"qty": 2, "owner": "alice", "idempotency_key": "k-42", "attempt": 3}
    r = await client.post("/api/orders", json={"qty": 1}, headers=tok)
    assert r.json()["idempotency_key"] is None and r.json()["attempt"] == 1
    r = await client.post("/api/orders", json={"qty": 1}, headers={**tok, "X-Attempt": "many"})
    assert r.status == 422
    # Neither the principal nor a header can be smuggled in through the body.
    r = await client.post("/api/orders", json={"qty": 1, "me": {"subject": "root"}, "key": "x"},
                          headers=tok)
    assert r.status == 201 and r.json()["owner"] == "alice" and r.json()["idempotency_key"] is None


async def test_tokens_resource_issues_tokens_the_edge_accepts(client):
    r = await client.post("/api/login", json={"subject": "carol", "roles": ["admin"]})
    assert r.status == 200, r.body
    assert r.json()["expires_in"] == 900
    r = await client.get("/api/admin", headers=bearer(r.json()["access_token"]))
    assert r.status == 200


async def test_openapi_has_bearer_and_header_but_not_principal_in_body(monolith):
    doc = (await monolith.get("/openapi.json")).json()
    order = doc["paths"]["/api/orders"]["post"]
    assert order["security"] == [{"bearer": []}]
    assert {"name": "Idempotency-Key", "in": "header", "required": False,  # as declared
            "schema": {"anyOf": [{"type": "string"}, {"type": "null"}]}} in order["parameters"]
    ref = order["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert list(body["properties"]) == ["qty"]
    assert [p["name"] for p in order["parameters"]] == ["Idempotency-Key", "X-Attempt"]
    assert doc["paths"]["/api/hello"]["get"]["security"] == [{"bearer": []}, {}]
    assert "security" not in doc["paths"]["/api/open"]["get"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_removing_the_old_key_ends_its_tokens(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(KEYFILE.read_text())
    settings = {"auth": {**SETTINGS["auth"], "keys": str(keys)}}
    old = bearer(sign(claims(), key=OLD, kid="old"))
    for listed, status in ((True, 200), (False, 401)):
        if not listed:
            keys.write_text(json.dumps({"keys": [
                {"kid": "new", "alg": "EdDSA", "private_pem": NEW_PRIV}]}))
        h = InProcessHarness(app, tmp_path / f"data-{listed}", strict=False, env={},
                             settings=settings)
        await h.start()
        try:
            assert (await h.get("/api/me", headers=old)).status == status
            assert (await h.get("/api/me", headers=bearer(sign(claims())))).status == 200
        finally:
            await h.aclose()


# -- tokens and keys without the edge -------------------------------------------


def test_verifier_issue_verify_and_hs256_only_when_configured(tmp_path):
    cfg = AuthConfig.from_settings({}, "shop", tmp_path)
    assert (cfg.issuer, cfg.audience, cfg.algorithms, cfg.access_ttl) == ("shop", "shop", ("EdDSA",), 900)
    v = TokenVerifier(cfg)
    token, ttl = v.issue_access("u1", roles=["a"], session="s")
    assert ttl == 900
    assert v.verify_access(token) == Principal("u1", ("a",), "s", v.verify_access(token).token_id)
    generated = tmp_path / ".auth-keys.json"
    assert generated.stat().st_mode & 0o777 == 0o600
    # A second verifier (another process) reads the same generated key.
    assert TokenVerifier(AuthConfig.from_settings({}, "shop", tmp_path)).verify_access(token).subject == "u1"

    secret = "s" * 40
    hs_file = tmp_path / "hs.json"
    hs_file.write_text(json.dumps({"keys": [{"kid": "h", "alg": "HS256", "secret": secret}]}))
    with pytest.raises(KeyFileError, match="does not allow"):
        load_keys(hs_file, ("EdDSA",))
    hs = TokenVerifier(AuthConfig.from_settings(
        {"auth": {"keys": str(hs_file), "algorithms": ["HS256"]}}, "shop", tmp_path))
    t, _ = hs.issue_access("u2")
    assert hs.verify_access(t).subject == "u2"
    with pytest.raises(Unauthorized, match=INVALID):
        v.verify_access(t)


def test_a_remembered_token_still_expires(tmp_path):
    """Verified tokens are remembered, but only for their own time window."""
    v = TokenVerifier(AuthConfig.from_settings({}, "shop", tmp_path))
    # exp is whole seconds: a ttl of 3 leaves the token more than 2 s to live.
    token, _ = v.issue_access("u1", ttl=3)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert v.verify_access(token).subject == "u1"
    assert v.verify_access(token).subject == "u1"  # from memory now
    assert time.time() < exp, "the checks above ran after the token had expired"
    while time.time() < exp:  # until the token's own exp has passed (at most 3 s)
        time.sleep(0.05)
    with pytest.raises(Unauthorized, match=INVALID):
        v.verify_access(token)


def test_concurrent_generation_agrees(tmp_path):
    from amoeba.auth.keys import _generate

    path = tmp_path / "k.json"
    _generate(path)
    first = path.read_text()
    _generate(path)  # loses the race: the existing file stays
    assert path.read_text() == first
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]


@pytest.mark.parametrize(("auth", "key"), [
    ({"access_ttl": 0}, "settings.auth.access_ttl"),
    ({"algorithms": ["none"]}, "settings.auth.algorithms"),
    ({"issuer": ""}, "settings.auth.issuer"),
    ({"keys": 3}, "settings.auth.keys"),
    ({"tll": 3}, "settings.auth"),
    ({"revocation": "maybe"}, "settings.auth.revocation"),
    ({"session_recheck": -1}, "settings.auth.session_recheck"),
])
def test_bad_auth_settings_name_the_key(tmp_path, auth, key):
    with pytest.raises(AuthConfigError, match=key.replace(".", r"\.")) as exc:
        AuthConfig.from_settings({"auth": auth}, "app", tmp_path)
    assert "fix:" in str(exc.value)


def test_revocation_settings(tmp_path):
    default = AuthConfig.from_settings({}, "app", tmp_path)
    assert default.revocation and default.session_recheck == 2.0
    off = AuthConfig.from_settings({"auth": {"revocation": "false", "session_recheck": "500ms"}},
                                   "app", tmp_path)
    assert not off.revocation and off.session_recheck == 0.5


async def test_revoked_sessions_in_one_process_are_seen_at_once(tmp_path):
    config = AuthConfig.from_settings({"auth": {"issuer": f"iss-{os.getpid()}-{time.time()}"}},
                                      "app", tmp_path)
    edge, tokens = config.revocations(None), config.revocations(None)  # no Redis: one table
    assert not await edge.is_revoked("s1")
    await tokens.revoke("s1")
    assert await edge.is_revoked("s1") and not await edge.is_revoked("s2")


async def test_passwords_hash_and_verify_off_the_loop():
    hashed = await hash_password("correct horse")
    assert hashed.startswith("$argon2id$")
    assert await verify_password(hashed, "correct horse")
    assert not await verify_password(hashed, "wrong")
    assert not await verify_password("not-a-hash", "x")
    assert not needs_rehash(hashed)


def test_key_file_env_is_not_world_readable_when_generated(tmp_path):
    TokenVerifier(AuthConfig.from_settings({}, "x", tmp_path)).issue_access("a")
    assert oct(os.stat(tmp_path / ".auth-keys.json").st_mode & 0o077) == "0o0"


async def test_password_hashes_are_capped_per_process(monkeypatch):
    """At most AMOEBA_PASSWORD_HASHES run at once; a call that waits longer than
    AMOEBA_PASSWORD_WAIT gets a 503 HashingBusy with a retry hint."""
    import asyncio
    import threading

    from amoeba.auth import passwords

    running, most = 0, 0
    lock = threading.Lock()

    class SlowHasher:  # stands in for argon2's CPU time: 0.2 s per check, in the worker thread
        def verify(self, hashed: str, password: str) -> bool:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.2)
            with lock:
                running -= 1
            return password == "right"

    monkeypatch.setattr(passwords, "_hasher", SlowHasher())
    monkeypatch.setattr(passwords, "_slots", passwords.weakref.WeakKeyDictionary())
    monkeypatch.setenv("AMOEBA_PASSWORD_HASHES", "1")
    monkeypatch.setenv("AMOEBA_PASSWORD_WAIT", "0.3")
    results = await asyncio.gather(*(passwords.verify_password("h", "right") for _ in range(6)),
                                   return_exceptions=True)
    ok = [r for r in results if r is True]
    busy = [r for r in results if isinstance(r, passwords.HashingBusy)]
    assert most == 1
    # one at a time: the first, maybe the second (0.2 s < 0.3 s of waiting), no more
    assert 1 <= len(ok) <= 2 and len(ok) + len(busy) == 6, results
    assert busy[0].status == 503 and busy[0].retry_after == 1.0
    assert busy[0].to_wire()["retry_after"] == 1.0
    monkeypatch.setenv("AMOEBA_PASSWORD_HASHES", "many")
    monkeypatch.setattr(passwords, "_slots", passwords.weakref.WeakKeyDictionary())
    with pytest.raises(ValueError, match="AMOEBA_PASSWORD_HASHES"):
        await passwords.verify_password("h", "right")


async def test_revoked_sessions_through_redis_reach_other_processes_within_the_recheck(tmp_path):
    import asyncio
    import secrets

    import servers

    from amoeba.auth.revocation import SessionRevocations

    prefix = f"i16-test-{secrets.token_hex(4)}:"
    url = f"{servers.redis_url()}/0?prefix={prefix}"
    recheck = 1.0
    edge = SessionRevocations.for_cache(url, "shop", lifetime=5, recheck=recheck)
    accounts = SessionRevocations.for_cache(url, "shop", lifetime=5, recheck=recheck)
    try:
        assert edge.client is not None and edge.key.startswith(prefix)
        asked = time.monotonic()
        assert not await edge.is_revoked("s1")  # remembered for `recheck` seconds
        await accounts.revoke("s1")
        assert await accounts.is_revoked("s1")  # at once where it was revoked
        # The other process trusts its answer until `recheck` has passed, then asks
        # again: polled, its first "revoked" comes no sooner, and not much later.
        trusted = 0
        while not await edge.is_revoked("s1"):
            trusted += 1
            assert time.monotonic() - asked < recheck + 10, "the revocation never reached it"
            await asyncio.sleep(0.02)
        took = time.monotonic() - asked
        print(f"revoked after {took:.2f}s; the remembered answer was used {trusted} times")
        assert took >= recheck  # not before its remembered answer was due a recheck
        ttl = await edge.client.pttl(edge.key + "s1")
        assert 0 < ttl <= 5000  # the mark outlives the session's last token, no longer
    finally:
        await edge.client.delete(edge.key + "s1")
        await edge.aclose()
        await accounts.aclose()

"""Authentication, scopes and tenancy over HTTP (SPEC 3): every refused request is a problem,
says nothing about other owners' wallets, and changes nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar.exceptions import NotAuthorizedException

from api import auth
from api.auth import SCOPES, mint_token
from core.settings import load_settings
from tests.api.helpers import (
    assert_problem,
    assert_unauthenticated,
    b64url,
    deposit,
    funded_wallet,
    open_wallet,
    state,
    unique,
    unsigned_token,
)
from tests.support.processes import running_server
from tests.support.tokens import JWT_SECRET

OTHER_SECRET = "another-secret-" + "y" * 40


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "auth-tests", "scope": " ".join(SCOPES), "iat": now, "exp": now + 600}
    return {key: value for key, value in (base | overrides).items() if value is not None}


@dataclass(frozen=True)
class World:
    """Wallets and ids the refused requests aim at; new_owner owns both wallets and is the owner
    open_wallet would open for; rule_owner is the owner set_rule would set a rule for."""

    wallet_id: str
    counterpart_id: str
    transaction_id: str
    new_owner: str
    rule_owner: str
    hold_id: str = ""


@pytest.fixture(scope="module")
def service(api_url: str, token) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token()}"}, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def world(service: httpx.Client) -> World:
    owner_id = unique("world")
    wallet = funded_wallet(service, 10_000, owner_id)
    counterpart = funded_wallet(service, 10_000, owner_id)
    transaction = deposit(service, wallet["id"], 10)
    return World(
        wallet["id"],
        counterpart["id"],
        transaction["id"],
        owner_id,
        unique("rule"),
        place_hold(service, wallet),
    )


def place_hold(service: httpx.Client, wallet: dict[str, Any]) -> str:
    response = service.post(f"/v1/wallets/{wallet['id']}/holds", json={"amount": 10})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def witness(service: httpx.Client, world: World) -> tuple[Any, ...]:
    """Everything a route of ROUTES could change: the owner's wallets, whole (any write moves
    updated_at; open_wallet adds one), the wallet's holds, and the rules of the rule owner."""
    wallets = service.get("/v1/wallets", params={"owner_id": world.new_owner}).json()["items"]
    holds = service.get(f"/v1/wallets/{world.wallet_id}/holds").json()["items"]
    rules = service.get("/v1/commission-rules").json()["items"]
    return wallets, holds, [rule for rule in rules if rule["owner_id"] == world.rule_owner]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: Callable[[World], dict[str, Any]] | None = None

    def call(self, http: httpx.Client, world: World, headers: dict[str, str] | None = None) -> httpx.Response:
        path = self.path.format(wallet=world.wallet_id, transaction=world.transaction_id, hold=world.hold_id)
        body = self.body(world) if self.body else None
        return http.request(self.method, path, json=body, headers=headers)


# At least one GET and one POST/PUT of each controller.
ROUTES = {
    "get_wallet": Route("GET", "/v1/wallets/{wallet}"),
    "list_wallets": Route("GET", "/v1/wallets"),
    "open_wallet": Route("POST", "/v1/wallets", lambda world: {"owner_id": world.new_owner}),
    "freeze": Route("POST", "/v1/wallets/{wallet}/freeze"),
    "close": Route("POST", "/v1/wallets/{wallet}/close"),
    "history": Route("GET", "/v1/wallets/{wallet}/transactions"),
    "deposit": Route("POST", "/v1/wallets/{wallet}/deposits", lambda world: {"amount": 10}),
    "withdrawal": Route("POST", "/v1/wallets/{wallet}/withdrawals", lambda world: {"amount": 10}),
    "transfer": Route(
        "POST",
        "/v1/transfers",
        lambda world: {"from_wallet_id": world.wallet_id, "to_wallet_id": world.counterpart_id, "amount": 10},
    ),
    "get_transaction": Route("GET", "/v1/transactions/{transaction}"),
    "place_hold": Route("POST", "/v1/wallets/{wallet}/holds", lambda world: {"amount": 10}),
    "capture_hold": Route("POST", "/v1/holds/{hold}/capture", lambda world: {"amount": 5}),
    "void_hold": Route("POST", "/v1/holds/{hold}/void"),
    "get_hold": Route("GET", "/v1/holds/{hold}"),
    "list_holds": Route("GET", "/v1/wallets/{wallet}/holds"),
    "list_rules": Route("GET", "/v1/commission-rules"),
    "set_rule": Route(
        "PUT",
        "/v1/commission-rules/transfer",
        lambda world: {"rate_bps": 1, "fixed": 1, "min_fee": 0, "max_fee": 5, "owner_id": world.rule_owner},
    ),
    "verify_ledger": Route("GET", "/v1/ledger/verify"),
}


def _forged_hs384() -> str:
    return jwt.encode(claims(), JWT_SECRET, algorithm="HS384")


BAD_CREDENTIALS: dict[str, Callable[[], dict[str, str]]] = {
    "no_header": lambda: {},
    "bearer_without_token": lambda: {"Authorization": "Bearer"},
    "basic_scheme": lambda: {"Authorization": "Basic xyz"},
    "valid_token_under_basic": lambda: {
        "Authorization": f"Basic {mint_token(JWT_SECRET, sub='x', scopes=list(SCOPES))}"
    },
    "not_a_jwt": lambda: {"Authorization": "Bearer not.a.jwt"},
    "bad_signature": lambda: {
        "Authorization": f"Bearer {jwt.encode(claims(), OTHER_SECRET, algorithm='HS256')}"
    },
    "alg_none": lambda: {"Authorization": f"Bearer {unsigned_token(claims())}"},
    "alg_none_uppercase": lambda: {
        "Authorization": f"Bearer {unsigned_token(claims(), {'alg': 'NONE', 'typ': 'JWT'})}"
    },
    "other_hmac_algorithm": lambda: {"Authorization": f"Bearer {_forged_hs384()}"},
    "expired_beyond_leeway": lambda: {
        "Authorization": f"Bearer {jwt.encode(claims(exp=int(time.time()) - 60), JWT_SECRET)}"
    },
    "without_sub": lambda: {"Authorization": f"Bearer {jwt.encode(claims(sub=None), JWT_SECRET)}"},
    "empty_sub": lambda: {"Authorization": f"Bearer {jwt.encode(claims(sub=''), JWT_SECRET)}"},
    "without_exp": lambda: {"Authorization": f"Bearer {jwt.encode(claims(exp=None), JWT_SECRET)}"},
    "oversized": lambda: {"Authorization": "Bearer " + "a" * 10_000},
}


# A GET and a write of each controller (movements have no GET; transactions no POST yet).
MATRIX_ROUTES = [
    "get_wallet",
    "open_wallet",
    "freeze",
    "deposit",
    "transfer",
    "get_transaction",
    "place_hold",
    "capture_hold",
    "get_hold",
    "list_rules",
    "set_rule",
    "verify_ledger",
]


@pytest.mark.parametrize("credential", sorted(BAD_CREDENTIALS))
@pytest.mark.parametrize("route", MATRIX_ROUTES)
def test_bad_credentials_are_401_with_www_authenticate_and_change_nothing(
    api_url, service, world, route, credential
):
    writes = ROUTES[route].method != "GET"
    before = witness(service, world) if writes else None

    with httpx.Client(base_url=api_url) as anonymous:
        response = ROUTES[route].call(anonymous, world, BAD_CREDENTIALS[credential]())

    assert_unauthenticated(response)
    if writes:
        assert witness(service, world) == before


def test_a_token_expired_within_the_leeway_is_still_accepted(api_url, token):
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token(ttl_seconds=-5)}"}) as http:
        assert http.get("/v1/commission-rules").status_code == 200


class Clock:
    """A clock for TokenVerifier that stands still until a test moves it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def verifier_at(clock: Clock, leeway_seconds: int) -> auth.TokenVerifier:
    settings = load_settings(
        {"WALLET_JWT_SECRET": JWT_SECRET, "WALLET_JWT_LEEWAY_SECONDS": str(leeway_seconds)}
    )
    return auth.TokenVerifier(settings, clock=clock)


@pytest.mark.parametrize("leeway", [0, 30])
def test_a_token_accepted_before_is_refused_once_it_expires(token, leeway):
    # The verifier remembers tokens it has verified; what it remembers must expire with them.
    clock = Clock()
    verifier = verifier_at(clock, leeway)
    expiring = token(sub="expiring", ttl_seconds=3)
    expires_at = jwt.decode(expiring, options={"verify_signature": False})["exp"]

    assert verifier.verify(expiring).sub == "expiring"
    clock.now = expires_at + leeway - 0.5
    assert verifier.verify(expiring).sub == "expiring"  # remembered, and still in date
    clock.now = expires_at + leeway
    with pytest.raises(NotAuthorizedException, match="expired"):
        verifier.verify(expiring)
    assert expiring not in verifier._verified


def test_a_token_never_seen_is_checked_against_the_verifiers_clock(token):
    # PyJWT reads the system clock, by which this token is in date; the verifier's is later.
    clock = Clock()
    verifier = verifier_at(clock, 0)
    in_date_now = token(sub="later", ttl_seconds=600)
    clock.now += 600

    with pytest.raises(NotAuthorizedException, match="expired"):
        verifier.verify(in_date_now)
    assert verifier._verified == {}
    clock.now -= 1
    assert verifier.verify(in_date_now).sub == "later"


def test_a_token_issued_after_the_verifiers_clock_is_not_yet_valid(token):
    clock = Clock()
    verifier = verifier_at(clock, 0)
    clock.now -= 60  # the token's iat is a minute ahead of this clock

    with pytest.raises(NotAuthorizedException, match="not valid"):
        verifier.verify(token())


def test_the_memory_of_verified_tokens_is_bounded(monkeypatch):
    monkeypatch.setattr(auth, "MAX_VERIFIED_TOKENS", 3)
    monkeypatch.setenv("WALLET_JWT_SECRET", JWT_SECRET)
    verifier = auth.TokenVerifier(load_settings())
    tokens = [mint_token(JWT_SECRET, sub=f"client-{n}", scopes=[]) for n in range(5)]

    subjects = [verifier.verify(token).sub for token in tokens + tokens]

    assert subjects == [f"client-{n}" for n in range(5)] * 2
    assert len(verifier._verified) == 3


def test_an_unsigned_token_is_refused_even_with_a_valid_signature_appended(api_url):
    """alg: none with the HS256 signature of the same header and claims pasted on: still 401."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    signature = hmac.new(JWT_SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()

    with httpx.Client(base_url=api_url) as anonymous:
        response = anonymous.get(
            "/v1/commission-rules",
            headers={"Authorization": f"Bearer {header}.{payload}.{b64url(signature)}"},
        )

    assert_unauthenticated(response)


# --- scopes -----------------------------------------------------------------------------------------

SCOPE_ROUTES = [
    ("wallets:read", "get_wallet"),
    ("wallets:read", "list_wallets"),
    ("wallets:read", "history"),
    ("wallets:read", "get_transaction"),
    ("wallets:create", "open_wallet"),
    ("wallets:admin", "freeze"),
    ("wallets:admin", "close"),
    ("deposits:write", "deposit"),
    ("withdrawals:write", "withdrawal"),
    ("transfers:write", "transfer"),
    ("holds:write", "place_hold"),
    ("holds:write", "capture_hold"),
    ("holds:write", "void_hold"),
    ("wallets:read", "get_hold"),
    ("wallets:read", "list_holds"),
    ("commissions:read", "list_rules"),
    ("commissions:write", "set_rule"),
    ("ledger:audit", "verify_ledger"),
]


def test_every_spec_scope_guards_a_route():
    assert {scope for scope, _ in SCOPE_ROUTES} == set(SCOPES)


@pytest.mark.parametrize(("scope", "route"), SCOPE_ROUTES)
def test_a_token_without_the_routes_scope_is_403_and_changes_nothing(
    api_url, service, world, token, scope, route
):
    before = witness(service, world)
    others = [other for other in SCOPES if other != scope]

    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token(*others)}"}) as http:
        response = ROUTES[route].call(http, world)

    assert_problem(response, 403, "forbidden")
    assert witness(service, world) == before


@pytest.mark.parametrize(("scope", "route"), SCOPE_ROUTES)
def test_a_token_with_only_the_routes_scope_is_allowed(api_url, service, token, scope, route):
    # A world of its own: these requests succeed and change it.
    wallet = funded_wallet(service, 1000)
    own_world = World(
        wallet_id=open_wallet(service)["id"] if route == "close" else wallet["id"],
        counterpart_id=open_wallet(service)["id"],
        transaction_id=deposit(service, wallet["id"], 10)["id"],
        new_owner=unique("new"),
        rule_owner=unique("rule"),
        hold_id=place_hold(service, wallet),
    )

    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token(scope)}"}) as http:
        response = ROUTES[route].call(http, own_world)

    assert response.status_code in (200, 201), response.text


def test_a_token_without_any_scope_is_403(api_url, service, world):
    empty = mint_token(JWT_SECRET, sub="no-scopes", scopes=[])
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {empty}"}) as http:
        assert_problem(ROUTES["get_wallet"].call(http, world), 403, "forbidden")


# --- tenancy ----------------------------------------------------------------------------------------

TENANT_ROUTES = [
    "get_wallet",
    "freeze",
    "close",
    "history",
    "deposit",
    "withdrawal",
    "transfer",
    "get_transaction",
    "place_hold",
    "capture_hold",
    "void_hold",
    "get_hold",
    "list_holds",
]


def test_another_owners_wallet_answers_exactly_like_an_unknown_one(api_url, service, world, token):
    """An owner token cannot tell another owner's wallet from one that does not exist."""
    mine = unique("mine")
    own_wallet = open_wallet(service, mine)
    before = witness(service, world)
    unknown = World(
        str(uuid.uuid4()),
        own_wallet["id"],
        str(uuid.uuid4()),
        world.new_owner,
        world.rule_owner,
        str(uuid.uuid4()),
    )
    theirs = World(
        world.wallet_id,
        own_wallet["id"],
        world.transaction_id,
        world.new_owner,
        world.rule_owner,
        world.hold_id,
    )

    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token(owner_id=mine)}"}) as owner:
        for route in TENANT_ROUTES:
            answers = [ROUTES[route].call(owner, target) for target in (theirs, unknown)]
            bodies = [assert_problem(answer, 404, "not_found") for answer in answers]
            assert bodies[0] == bodies[1], route

    assert witness(service, world) == before
    assert state(service, own_wallet["id"]) == (0, 0, 0, "active", 0, 0)


def test_an_owner_token_may_transfer_to_another_owners_wallet(api_url, service, token):
    mine, theirs = unique("mine"), unique("theirs")
    own_wallet, their_wallet = funded_wallet(service, 1000, mine), open_wallet(service, theirs)

    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token(owner_id=mine)}"}) as owner:
        response = owner.post(
            "/v1/transfers",
            json={"from_wallet_id": own_wallet["id"], "to_wallet_id": their_wallet["id"], "amount": 400},
        )
        own_read = owner.get(f"/v1/transactions/{response.json()['id']}")

    assert response.status_code == 201, response.text
    assert own_read.status_code == 200, "the sender's owner may read its own transfer"
    assert service.get(f"/v1/wallets/{their_wallet['id']}").json()["balance"] == 400
    assert service.get(f"/v1/wallets/{own_wallet['id']}").json()["balance"] == 600 - response.json()["fee"]
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {token(owner_id=theirs)}"}
    ) as receiver:
        assert receiver.get(f"/v1/transactions/{response.json()['id']}").status_code == 200


def test_an_owner_token_lists_only_its_own_wallets(api_url, service, token):
    mine, theirs = unique("mine"), unique("theirs")
    own_ids = {open_wallet(service, mine)["id"] for _ in range(2)}
    open_wallet(service, theirs)

    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token(owner_id=mine)}"}) as owner:
        everything = owner.get("/v1/wallets", params={"limit": 100}).json()
        asked_for_theirs = owner.get("/v1/wallets", params={"owner_id": theirs}).json()

    assert {wallet["id"] for wallet in everything["items"]} == own_ids
    assert asked_for_theirs["items"] == []


def test_a_service_token_acts_on_any_owners_wallet(api_url, token):
    first, second = unique("first"), unique("second")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token()}"}) as service_http:
        wallets = [open_wallet(service_http, owner) for owner in (first, second)]
        for wallet in wallets:
            assert service_http.get(f"/v1/wallets/{wallet['id']}").status_code == 200
            assert deposit(service_http, wallet["id"], 500)["wallet_id"] == wallet["id"]
            withdrawn = service_http.post(f"/v1/wallets/{wallet['id']}/withdrawals", json={"amount": 100})
            assert withdrawn.status_code == 201
        transfer = service_http.post(
            "/v1/transfers",
            json={"from_wallet_id": wallets[1]["id"], "to_wallet_id": wallets[0]["id"], "amount": 50},
        )
        assert transfer.status_code == 201
        assert service_http.get(f"/v1/transactions/{transfer.json()['id']}").status_code == 200
        for wallet in wallets:
            assert service_http.get(f"/v1/wallets/{wallet['id']}/transactions").status_code == 200
            assert service_http.post(f"/v1/wallets/{wallet['id']}/freeze").json()["status"] == "frozen"


# --- RS256 and audience / issuer --------------------------------------------------------------------


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rs256(shared_database_url: str) -> Iterator[tuple[str, rsa.RSAPrivateKey]]:
    key = _rsa_key()
    with running_server(
        shared_database_url, WALLET_JWT_ALGORITHM="RS256", WALLET_JWT_PUBLIC_KEY=_public_pem(key)
    ) as base_url:
        yield base_url, key


def _get_rules(base_url: str, token: str) -> httpx.Response:
    with httpx.Client(base_url=base_url) as http:
        return http.get("/v1/commission-rules", headers={"Authorization": f"Bearer {token}"})


def test_rs256_server_accepts_a_token_signed_with_its_key(rs256):
    base_url, key = rs256

    response = _get_rules(base_url, jwt.encode(claims(), key, algorithm="RS256"))

    assert response.status_code == 200


def test_rs256_server_refuses_an_hs256_token(rs256, token):
    base_url, _ = rs256

    assert_unauthenticated(_get_rules(base_url, token()))


def test_rs256_server_refuses_hs256_signed_with_its_public_key(rs256):
    """The algorithm-confusion attack: the public key (which anyone has) used as an HMAC secret."""
    base_url, key = rs256
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    mac = hmac.new(_public_pem(key).encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()

    assert_unauthenticated(_get_rules(base_url, f"{header}.{payload}.{b64url(mac)}"))


def test_rs256_server_refuses_a_token_signed_with_another_key(rs256):
    base_url, _ = rs256

    assert_unauthenticated(_get_rules(base_url, jwt.encode(claims(), _rsa_key(), algorithm="RS256")))


def test_rs256_server_refuses_alg_none(rs256):
    base_url, _ = rs256

    assert_unauthenticated(_get_rules(base_url, unsigned_token(claims())))


AUDIENCE, ISSUER = "wallet-api", "https://auth.example.test"


@pytest.fixture(scope="module")
def audience_api(shared_database_url: str) -> Iterator[str]:
    with running_server(
        shared_database_url, WALLET_JWT_AUDIENCE=AUDIENCE, WALLET_JWT_ISSUER=ISSUER
    ) as base_url:
        yield base_url


def test_configured_audience_and_issuer_accept_a_matching_token(audience_api):
    right = jwt.encode(claims(aud=AUDIENCE, iss=ISSUER), JWT_SECRET, algorithm="HS256")
    among_others = jwt.encode(claims(aud=["billing", AUDIENCE], iss=ISSUER), JWT_SECRET, algorithm="HS256")

    assert _get_rules(audience_api, right).status_code == 200
    assert _get_rules(audience_api, among_others).status_code == 200


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "other-api", "iss": ISSUER},
        {"aud": None, "iss": ISSUER},
        {"aud": AUDIENCE, "iss": "https://evil.example.test"},
        {"aud": AUDIENCE, "iss": None},
    ],
    ids=["wrong_aud", "missing_aud", "wrong_iss", "missing_iss"],
)
def test_configured_audience_and_issuer_refuse_a_token_without_them(audience_api, overrides):
    token = jwt.encode(claims(**overrides), JWT_SECRET, algorithm="HS256")

    assert_unauthenticated(_get_rules(audience_api, token))

"""Every request and response body, as strict msgspec Structs (SPEC 4).

Bounds are named once here; the ledger checks them again in SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

import msgspec
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition
from msgspec import Meta, Struct

from api.examples import REQUEST_EXAMPLES

MAX_AMOUNT = 10**15
MAX_FEE_SETTING = 10**15
PAGE_LIMIT_MAX = 500
PAGE_LIMIT_DEFAULT = 50

Amount = Annotated[
    int, Meta(ge=1, le=MAX_AMOUNT, description="Rials: a JSON integer from 1 to 10^15 (not 10.0, not 1e3)")
]
OwnerId = Annotated[str, Meta(min_length=1, max_length=255)]
Currency = Annotated[str, Meta(pattern="^[A-Z]{3}$", description="Three upper-case letters")]
Reference = Annotated[str, Meta(min_length=1, max_length=255)]
Metadata = Annotated[dict[str, Any], Meta(description="A JSON object of at most 4096 bytes")]
AwareDateTime = Annotated[datetime, Meta(tz=True)]
AvailableAt = Annotated[
    datetime,
    Meta(
        tz=True,
        description="RFC 3339 with an offset, at most 366 days ahead: the deposit is scheduled and "
        "settles then. In the past or within a second: an instant deposit. Its UTC value must lie "
        "in the years 1 to 9999.",
    ),
]
ExpiresAt = Annotated[
    datetime,
    Meta(
        tz=True,
        description="RFC 3339 with an offset, in the future and at most 366 days ahead: the hold "
        "expires then and its remaining amount is released. Without it, the hold expires 7 days after "
        "it is placed.",
    ),
]
Fee = Annotated[int, Meta(ge=0, le=MAX_FEE_SETTING)]
Operation = Literal["deposit", "withdrawal", "transfer"]
StructT = TypeVar("StructT", bound=Struct)


class Request(Struct, frozen=True, forbid_unknown_fields=True):
    pass


class OpenWalletRequest(Request):
    owner_id: OwnerId
    currency: Currency = "IRR"
    metadata: Metadata = {}


class DepositRequest(Request):
    amount: Amount
    available_at: AvailableAt | None = None
    reference: Reference | None = None
    metadata: Metadata = {}

    def __post_init__(self) -> None:
        if self.available_at is not None and not is_utc_instant(self.available_at):
            raise ValueError("available_at must be a UTC instant in the years 1 to 9999")  # msgspec: 400


class WithdrawalRequest(Request):
    amount: Amount
    reference: Reference | None = None
    metadata: Metadata = {}


class TransferRequest(Request):
    from_wallet_id: UUID
    to_wallet_id: UUID
    amount: Amount
    reference: Reference | None = None
    metadata: Metadata = {}


class PlaceHoldRequest(Request):
    amount: Amount
    expires_at: ExpiresAt | None = None
    reference: Reference | None = None
    metadata: Metadata = {}

    def __post_init__(self) -> None:
        if self.expires_at is not None and not is_utc_instant(self.expires_at):
            raise ValueError("expires_at must be a UTC instant in the years 1 to 9999")  # msgspec: 400


class CaptureHoldRequest(Request):
    amount: Annotated[
        Amount | None,
        Meta(description="Rials to capture, at most the hold's remaining amount; without it, all of it"),
    ] = None
    to_wallet_id: Annotated[
        UUID | None,
        Meta(description="A wallet (of any owner) that receives the amount; without it, the money leaves"),
    ] = None
    final: Annotated[
        bool, Meta(description="Close the hold after this capture, releasing what remains of it")
    ] = False


class CommissionRuleRequest(Request):
    rate_bps: Annotated[int, Meta(ge=0, le=10000, description="Basis points of the amount")]
    fixed: Fee
    min_fee: Fee
    max_fee: Fee | None
    owner_id: OwnerId | None = None


class Wallet(Struct, frozen=True):
    id: UUID
    owner_id: str
    currency: str
    status: Literal["active", "frozen", "closed"]
    balance: int
    held: Annotated[int, Meta(description="Reserved by active holds: part of the balance, not spendable")]
    available: Annotated[int, Meta(description="balance - held: what can be spent now")]
    pending: int
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any]


class Transaction(Struct, frozen=True):
    id: UUID
    kind: Literal["deposit", "withdrawal", "transfer"]
    status: Literal["posted", "scheduled", "canceled", "failed"]
    wallet_id: UUID | None
    from_wallet_id: UUID | None
    to_wallet_id: UUID | None
    currency: str
    amount: int
    fee: int
    reference: str | None
    metadata: dict[str, Any]
    available_at: datetime | None
    created_at: datetime
    posted_at: datetime | None
    failure_reason: str | None
    hold_id: Annotated[UUID | None, Meta(description="The hold a capture drew on; null otherwise")]


class Hold(Struct, frozen=True):
    id: UUID
    wallet_id: UUID
    status: Literal["active", "captured", "voided", "expired"]
    amount: Annotated[int, Meta(description="Rials reserved when the hold was placed")]
    captured_amount: Annotated[int, Meta(description="Rials captured so far")]
    remaining: Annotated[int, Meta(description="Rials still reserved (0 once the hold is closed)")]
    reference: str | None
    metadata: dict[str, Any]
    expires_at: datetime
    created_at: datetime
    closed_at: Annotated[datetime | None, Meta(description="When it was captured in full, voided or expired")]


class HistoryItem(Struct, frozen=True):
    transaction_id: UUID
    kind: Literal["deposit", "withdrawal", "transfer"]
    status: Literal["posted", "scheduled", "canceled", "failed"]
    amount: Annotated[int, Meta(description="Signed net effect on this wallet")]
    fee: int
    balance_after: int | None
    created_at: datetime
    reference: str | None
    hold_id: Annotated[UUID | None, Meta(description="The hold a capture drew on; null otherwise")]


class CommissionRule(Struct, frozen=True):
    operation: Operation
    owner_id: str | None
    rate_bps: int
    fixed: int
    min_fee: int
    max_fee: int | None
    created_at: datetime


class WalletPage(Struct, frozen=True):
    items: list[Wallet]
    next_cursor: str | None


class HistoryPage(Struct, frozen=True):
    items: list[HistoryItem]
    next_cursor: str | None


class HoldPage(Struct, frozen=True):
    items: list[Hold]
    next_cursor: str | None


class CommissionRules(Struct, frozen=True):
    items: list[CommissionRule]


class Violation(Struct, frozen=True):
    check_name: str
    detail: str


class LedgerReport(Struct, frozen=True):
    ok: bool
    violations: list[Violation]


def is_utc_instant(moment: datetime) -> bool:
    """An aware date-time whose UTC value lies in the years 1 to 9999, the range of the API (and
    of Python): `9999-12-31T23:59:59-14:00` is in the year 10000 in UTC."""
    if moment.tzinfo is None:
        return False
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


def from_record(struct: type[StructT], record: Any) -> StructT:
    """A response Struct from a database row, taking the Struct's fields by name."""
    return struct(**{field: record[field] for field in struct.__struct_fields__})


def wallet_from_record(record: Any) -> Wallet:
    """A Wallet from a wallet.wallet_result, which has no `held` (the previous release builds
    that type positionally, so it gains no attribute): held is balance - available."""
    fields = {field: record[field] for field in Wallet.__struct_fields__ if field != "held"}
    return Wallet(**fields, held=record["balance"] - record["available"])


def transaction_from_record(record: Any) -> Transaction:
    """A Transaction from a wallet.transaction_result (deposits, withdrawals, transfers and
    cancels: none draws on a hold) or a wallet.transaction_result_v2 (captures and reads), which
    has hold_id."""
    fields = {field: record[field] for field in Transaction.__struct_fields__ if field != "hold_id"}
    return Transaction(**fields, hold_id=record.get("hold_id"))


class RequestSchemaPlugin(OpenAPISchemaPlugin):
    """The OpenAPI document describes each request body with msgspec's own JSON Schema of it:
    exactly what the strict decoder accepts (no unknown property, every bound, an optional
    field's bounds too), so the document is as strict as the server."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return not field_definition.is_union and field_definition.is_subclass_of(Request)

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        (_,), components = msgspec.json.schema_components([field_definition.type_])
        body = components[field_definition.type_.__name__]
        schema = schema_creator.create_component_schema(
            field_definition, required=sorted(body.get("required", [])), property_fields={}
        )
        schema.properties = {name: _openapi(value) for name, value in body["properties"].items()}
        schema.additional_properties = body["additionalProperties"]
        schema.examples = [
            example.value for example in REQUEST_EXAMPLES.get(field_definition.type_.__name__, [])
        ]
        return schema


def _openapi(json_schema: dict[str, Any]) -> Schema:
    """A JSON Schema of msgspec as Litestar's Schema (keys named as its field aliases say)."""
    aliases = Schema.field_aliases()
    fields: dict[str, Any] = {}
    for key, value in json_schema.items():
        if key in ("anyOf", "oneOf", "allOf"):
            value = [_openapi(item) for item in value]
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            value = _openapi(value)
        elif key == "type":
            value = OpenAPIType(value)
        fields[aliases.get(key, key)] = value
    return Schema(**fields)

-- Holds (issue 12): money reserved in a wallet by an authorization, then captured (in one or
-- more parts) as a withdrawal or a transfer, voided, or expired. Functions are in sql/holds.sql
-- and sql/capture_hold.sql.
--
-- Additive only (README, "Upgrades and rolling deploys"): a column with a default, a table,
-- indexes, a nullable column, domains and composite types of its own. The result types the
-- previous release's code builds (wallet.wallet_result, wallet.transaction_result) are left as
-- they are: its to_wallet_result and to_transaction_result build them positionally
-- (ROW(...)::wallet.wallet_result), so one more attribute would break every call of its
-- functions once a rollback re-applied its sql/. available, already in wallet.wallet_result,
-- now means balance - held; a capture's hold_id comes in wallet.transaction_result_v2.
-- depends: 0008_history_indexes

CREATE DOMAIN wallet.hold_status AS text CHECK (VALUE IN ('active', 'captured', 'voided', 'expired'));

-- held: the sum of the remaining of the wallet's active holds (wallet.verify_ledger checks it).
-- A fast default: no rewrite of the table. The CHECKs are NOT VALID so that adding them reads
-- no row while this migration holds the table's ACCESS EXCLUSIVE lock (taken by ADD COLUMN,
-- kept to the commit of `wallet migrate`): every existing row satisfies them by construction
-- (held is 0 on each, and balance >= 0 is a validated CHECK), and PostgreSQL enforces a NOT
-- VALID CHECK on every INSERT and UPDATE from now on, like any other. A later release may
-- VALIDATE them (SHARE UPDATE EXCLUSIVE: it blocks no reader or writer) to mark them proven.
ALTER TABLE wallet.wallets
    ADD COLUMN held bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT wallets_held_check CHECK (held >= 0 AND held <= 1000000000000000000) NOT VALID,
    ADD CONSTRAINT held_within_balance CHECK (balance - held >= 0) NOT VALID,
    ADD CONSTRAINT closed_wallet_holds_nothing CHECK (status <> 'closed' OR held = 0) NOT VALID;

CREATE TABLE wallet.holds (
    id               uuid        PRIMARY KEY DEFAULT wallet.uuid_v7(),
    -- Checked at commit, when the placing transaction already holds the wallet row (see the
    -- same clause on wallet.transactions in 0001).
    wallet_id        uuid        NOT NULL REFERENCES wallet.wallets (id) DEFERRABLE INITIALLY DEFERRED,
    status           wallet.hold_status NOT NULL DEFAULT 'active',
    amount           wallet.amount NOT NULL,
    -- What captures drew (the sum of the amounts of the hold's transactions) and what the
    -- hold still reserves; amount - captured_amount - remaining was released when it closed.
    captured_amount  bigint      NOT NULL DEFAULT 0,
    remaining        bigint      NOT NULL,
    reference        wallet.short_text,
    metadata         wallet.metadata NOT NULL DEFAULT '{}',
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    closed_at        timestamptz,
    -- The caller that placed it (transactions.created_by); its idempotency key, like a
    -- movement's, lives in wallet.idempotency_keys with the first response.
    created_by       wallet.short_text,
    CONSTRAINT hold_parts_within_amount CHECK (
        captured_amount >= 0 AND remaining >= 0 AND captured_amount + remaining <= amount),
    -- Active exactly while it reserves something, and nothing is released before it closes.
    CONSTRAINT only_active_holds_reserve CHECK ((status = 'active') = (remaining > 0)),
    CONSTRAINT active_hold_released_nothing CHECK (status <> 'active' OR captured_amount + remaining = amount),
    CONSTRAINT captured_hold_drew_money CHECK (status <> 'captured' OR captured_amount > 0),
    CONSTRAINT closed_at_iff_closed CHECK ((status = 'active') = (closed_at IS NULL)),
    -- Absolute times, so the bound is the same in every time zone and across a DST change.
    CONSTRAINT expires_within_bounds CHECK (
        expires_at - created_at BETWEEN interval '1 second' AND interval '366 days')
);

-- A wallet's holds newest first (ids are time-ordered), one index range per status, as
-- wallet.list_holds reads them; the active range also sums a wallet's held for the audits.
CREATE INDEX holds_wallet_status_idx ON wallet.holds (wallet_id, status, id DESC);

-- Active holds by expiry: the reconciler's overdue holds, and hold_stats' figures.
CREATE INDEX holds_active_expiry_idx ON wallet.holds (expires_at) WHERE status = 'active';

-- Expired holds by when they expired: hold_stats' expiry lag over its window.
CREATE INDEX holds_expired_idx ON wallet.holds (closed_at) WHERE status = 'expired';

-- Holds are state, like wallets (their amounts change as they are captured and closed), but
-- never removed: a capture's transaction names its hold.
CREATE TRIGGER holds_no_delete
    BEFORE DELETE ON wallet.holds
    FOR EACH ROW EXECUTE FUNCTION wallet.refuse_change();
CREATE TRIGGER holds_no_truncate
    BEFORE TRUNCATE ON wallet.holds
    FOR EACH STATEMENT EXECUTE FUNCTION wallet.refuse_change();

-- The hold a capture drew on. A capture is a posted withdrawal or transfer, a fact like any
-- other: the triggers of 0001 refuse any change of it once posted. NOT VALID, as above: every
-- existing row has hold_id NULL, and the ledger's largest table is not read under its lock.
-- No index on it: building one reads that whole table under the lock too (and no index can be
-- built by hand beforehand on a column this migration adds); only the full verify_ledger reads
-- captures by hold, in the one pass over transactions it makes anyway.
ALTER TABLE wallet.transactions
    ADD COLUMN hold_id uuid,
    ADD CONSTRAINT transactions_hold_id_fkey FOREIGN KEY (hold_id) REFERENCES wallet.holds (id) NOT VALID,
    ADD CONSTRAINT only_captures_name_a_hold CHECK (hold_id IS NULL OR kind <> 'deposit') NOT VALID;

CREATE TYPE wallet.hold_result AS (
    id               uuid,
    wallet_id        uuid,
    status           text,
    amount           bigint,
    captured_amount  bigint,
    remaining        bigint,
    reference        text,
    metadata         jsonb,
    expires_at       timestamptz,
    created_at       timestamptz,
    closed_at        timestamptz,
    replayed         boolean
);

-- wallet.transaction_result and the hold a capture drew on (NULL for every other transaction).
CREATE TYPE wallet.transaction_result_v2 AS (
    id              uuid,
    kind            text,
    status          text,
    wallet_id       uuid,
    from_wallet_id  uuid,
    to_wallet_id    uuid,
    currency        text,
    amount          bigint,
    fee             bigint,
    reference       text,
    metadata        jsonb,
    available_at    timestamptz,
    created_at      timestamptz,
    posted_at       timestamptz,
    failure_reason  text,
    hold_id         uuid,
    replayed        boolean
);

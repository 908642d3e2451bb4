-- The ledger's tables. Functions live in sql/ and are re-applied by `wallet migrate`;
-- this file holds what cannot be replaced in place: tables, constraints, triggers, types.
--
-- Every rule a function enforces with a clear error is enforced here a second time
-- as a constraint, so a bug in a function cannot corrupt the ledger.

CREATE SCHEMA IF NOT EXISTS wallet;

-- Time-ordered UUIDs (version 7 layout: 48-bit Unix milliseconds, then random bits):
-- new rows land at the right edge of the primary-key index instead of a random page.
CREATE FUNCTION wallet.uuid_v7() RETURNS uuid
LANGUAGE plpgsql VOLATILE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN encode(
        set_bit(
            set_bit(
                overlay(uuid_send(gen_random_uuid())
                        PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                        FROM 1 FOR 6),
                52, 1),
            53, 1),
        'hex')::uuid;
END
$$;

-- Rules about one value are domains, not table CHECKs: PostgreSQL re-prepares every CHECK
-- of a table for each INSERT or UPDATE statement (a balance update would re-validate the
-- metadata), while a domain is checked only when a value of it is written, from a cache.
-- Rules across columns stay table CHECKs.
CREATE DOMAIN wallet.amount AS bigint CHECK (VALUE BETWEEN 1 AND 1000000000000000);
CREATE DOMAIN wallet.fee AS bigint CHECK (VALUE BETWEEN 0 AND 2000000000000000);
CREATE DOMAIN wallet.currency_code AS text CHECK (VALUE ~ '^[A-Z]{3}$');
CREATE DOMAIN wallet.short_text AS text CHECK (length(VALUE) BETWEEN 1 AND 255);
CREATE DOMAIN wallet.metadata AS jsonb
    CHECK (jsonb_typeof(VALUE) = 'object' AND octet_length(VALUE::text) <= 4096);
CREATE DOMAIN wallet.wallet_status AS text CHECK (VALUE IN ('active', 'frozen', 'closed'));
CREATE DOMAIN wallet.transaction_kind AS text CHECK (VALUE IN ('deposit', 'withdrawal', 'transfer'));
CREATE DOMAIN wallet.transaction_status AS text CHECK (VALUE IN ('posted', 'scheduled', 'canceled', 'failed'));

-- Merchant wallets. System accounts (the outside world, commission revenue) are not rows
-- here: they exist only as entries, so no row is written by every operation.
CREATE TABLE wallet.wallets (
    id          uuid        PRIMARY KEY DEFAULT wallet.uuid_v7(),
    owner_id    wallet.short_text    NOT NULL,
    currency    wallet.currency_code NOT NULL DEFAULT 'IRR',
    status      wallet.wallet_status NOT NULL DEFAULT 'active',
    balance     bigint      NOT NULL DEFAULT 0 CHECK (balance BETWEEN 0 AND 1000000000000000000),
    pending     bigint      NOT NULL DEFAULT 0 CHECK (pending BETWEEN 0 AND 1000000000000000000),
    metadata    wallet.metadata      NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT closed_wallet_is_empty CHECK (status <> 'closed' OR (balance = 0 AND pending = 0))
) WITH (fillfactor = 70);  -- room on the page for HOT updates of balance

CREATE INDEX wallets_owner_id_idx ON wallet.wallets (owner_id, id);

CREATE TABLE wallet.transactions (
    id              uuid        PRIMARY KEY DEFAULT wallet.uuid_v7(),
    kind            wallet.transaction_kind   NOT NULL,
    status          wallet.transaction_status NOT NULL,
    -- Checked at commit, when this transaction already holds the wallet rows: checked
    -- at insert (before the wallet is locked), the key-share lock of a foreign key turns
    -- every version of a hot wallet row into a MultiXact.
    wallet_id       uuid        REFERENCES wallet.wallets (id) DEFERRABLE INITIALLY DEFERRED,
    from_wallet_id  uuid        REFERENCES wallet.wallets (id) DEFERRABLE INITIALLY DEFERRED,
    to_wallet_id    uuid        REFERENCES wallet.wallets (id) DEFERRABLE INITIALLY DEFERRED,
    currency        wallet.currency_code NOT NULL,
    amount          wallet.amount        NOT NULL,
    fee             wallet.fee           NOT NULL,
    reference       wallet.short_text,
    metadata        wallet.metadata      NOT NULL DEFAULT '{}',
    available_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    posted_at       timestamptz,
    failure_reason  text        CHECK (length(failure_reason) <= 1000),
    created_by      wallet.short_text,
    -- Position in the wallet history of a deposit that is not (or never was) posted;
    -- drawn from the same sequence as entries.id so both sort together.
    history_seq     bigint,
    CONSTRAINT deposit_or_withdrawal_has_one_wallet CHECK (
        kind = 'transfer'
        OR (wallet_id IS NOT NULL AND from_wallet_id IS NULL AND to_wallet_id IS NULL)),
    CONSTRAINT transfer_has_two_wallets CHECK (
        kind <> 'transfer'
        OR (wallet_id IS NULL AND from_wallet_id IS NOT NULL AND to_wallet_id IS NOT NULL
            AND from_wallet_id <> to_wallet_id)),
    CONSTRAINT deposit_fee_below_amount CHECK (kind <> 'deposit' OR fee < amount),
    CONSTRAINT only_deposits_are_scheduled CHECK (
        kind = 'deposit' OR (status = 'posted' AND available_at IS NULL)),
    CONSTRAINT posted_at_iff_posted CHECK ((status = 'posted') = (posted_at IS NOT NULL)),
    CONSTRAINT failure_reason_iff_failed CHECK ((status = 'failed') = (failure_reason IS NOT NULL))
);

-- Deposits that are scheduled, canceled or failed appear in the wallet history beside entries.
CREATE INDEX transactions_unposted_history_idx
    ON wallet.transactions (wallet_id, history_seq DESC) WHERE status <> 'posted';

-- Due scheduled deposits, for the settlement sweep and the reconciler.
CREATE INDEX transactions_scheduled_idx
    ON wallet.transactions (available_at) WHERE status = 'scheduled';

CREATE SEQUENCE wallet.history_seq AS bigint;

-- One row per leg of a posted transaction. A leg is either a merchant wallet (wallet_id)
-- or a system account (account): the outside world, where deposits come from and
-- withdrawals go, and the platform's commission revenue. System accounts keep no balance
-- row; their balances are sums of their entries (wallet.system_account_balances).
CREATE TABLE wallet.entries (
    id              bigint      PRIMARY KEY DEFAULT nextval('wallet.history_seq'),
    transaction_id  uuid        NOT NULL REFERENCES wallet.transactions (id),
    wallet_id       uuid        REFERENCES wallet.wallets (id),
    account         text        CHECK (account IN ('world', 'revenue')),
    currency        wallet.currency_code NOT NULL,
    net_amount      bigint      NOT NULL CHECK (net_amount <> 0),
    -- The wallet's balance around this entry (merchant legs only), so history needs no
    -- recomputation and an auditor can check every step of the chain.
    balance_before  bigint,
    balance_after   bigint      CHECK (balance_after >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT one_leg_kind CHECK ((wallet_id IS NULL) <> (account IS NULL)),
    CONSTRAINT merchant_leg_has_balances CHECK (
        (wallet_id IS NULL AND balance_before IS NULL AND balance_after IS NULL)
        OR (wallet_id IS NOT NULL AND balance_after = balance_before + net_amount))
);

ALTER SEQUENCE wallet.history_seq OWNED BY wallet.entries.id;

CREATE INDEX entries_wallet_history_idx ON wallet.entries (wallet_id, id DESC) WHERE wallet_id IS NOT NULL;

-- Commission rules are never updated: setting a rule appends a row, and the newest row
-- for (operation, owner_id) is the rule in force. owner_id NULL is the default rule.
CREATE TABLE wallet.commission_rules (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation   text        NOT NULL CHECK (operation IN ('deposit', 'withdrawal', 'transfer')),
    owner_id    text        CHECK (length(owner_id) BETWEEN 1 AND 255),
    rate_bps    integer     NOT NULL CHECK (rate_bps BETWEEN 0 AND 10000),
    fixed       bigint      NOT NULL CHECK (fixed BETWEEN 0 AND 1000000000000000),
    min_fee     bigint      NOT NULL CHECK (min_fee BETWEEN 0 AND 1000000000000000),
    max_fee     bigint      CHECK (max_fee BETWEEN 0 AND 1000000000000000),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        CHECK (length(created_by) BETWEEN 1 AND 255),
    CONSTRAINT min_fee_not_above_max_fee CHECK (max_fee IS NULL OR min_fee <= max_fee)
);

CREATE INDEX commission_rules_lookup_idx ON wallet.commission_rules (operation, owner_id, id DESC);

-- Idempotency keys, scoped to the caller (the token's sub). The response of the first
-- execution is kept so a replay returns it unchanged. Kept at least 24 hours.
CREATE TABLE wallet.idempotency_keys (
    caller_id    text        NOT NULL CHECK (length(caller_id) BETWEEN 1 AND 255),
    key          text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255 AND key ~ '^[ -~]+$'),
    operation    text        NOT NULL,
    fingerprint  text        NOT NULL CHECK (length(fingerprint) BETWEEN 1 AND 255),
    -- NULL only inside the transaction that claims the key; set before it commits.
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller_id, key)
);

CREATE INDEX idempotency_keys_created_at_idx ON wallet.idempotency_keys (created_at);

-- What the money functions return: the row plus whether it is a replay.
CREATE TYPE wallet.wallet_result AS (
    id          uuid,
    owner_id    text,
    currency    text,
    status      text,
    balance     bigint,
    available   bigint,
    pending     bigint,
    metadata    jsonb,
    created_at  timestamptz,
    updated_at  timestamptz,
    replayed    boolean
);

CREATE TYPE wallet.transaction_result AS (
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
    replayed        boolean
);

-- Facts are never rewritten: the database refuses it, whoever asks.
CREATE FUNCTION wallet.refuse_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'WR500',
        MESSAGE = format('%s on %I.%I is refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME),
        DETAIL  = 'Ledger facts are append-only; a correction is a new transaction.';
END
$$;

CREATE TRIGGER entries_append_only
    BEFORE UPDATE OR DELETE ON wallet.entries
    FOR EACH ROW EXECUTE FUNCTION wallet.refuse_change();
CREATE TRIGGER entries_no_truncate
    BEFORE TRUNCATE ON wallet.entries
    FOR EACH STATEMENT EXECUTE FUNCTION wallet.refuse_change();

CREATE TRIGGER transactions_no_delete
    BEFORE DELETE ON wallet.transactions
    FOR EACH ROW EXECUTE FUNCTION wallet.refuse_change();
CREATE TRIGGER transactions_no_truncate
    BEFORE TRUNCATE ON wallet.transactions
    FOR EACH STATEMENT EXECUTE FUNCTION wallet.refuse_change();

CREATE TRIGGER commission_rules_append_only
    BEFORE UPDATE OR DELETE ON wallet.commission_rules
    FOR EACH ROW EXECUTE FUNCTION wallet.refuse_change();
CREATE TRIGGER commission_rules_no_truncate
    BEFORE TRUNCATE ON wallet.commission_rules
    FOR EACH STATEMENT EXECUTE FUNCTION wallet.refuse_change();

CREATE TRIGGER wallets_no_delete
    BEFORE DELETE ON wallet.wallets
    FOR EACH ROW EXECUTE FUNCTION wallet.refuse_change();
CREATE TRIGGER wallets_no_truncate
    BEFORE TRUNCATE ON wallet.wallets
    FOR EACH STATEMENT EXECUTE FUNCTION wallet.refuse_change();

-- A transaction changes only by leaving 'scheduled'; everything else about it is fixed.
CREATE FUNCTION wallet.guard_transaction_update() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF OLD.status <> 'scheduled'
       OR (NEW.id, NEW.kind, NEW.wallet_id, NEW.from_wallet_id, NEW.to_wallet_id, NEW.currency,
           NEW.amount, NEW.fee, NEW.reference, NEW.metadata, NEW.available_at, NEW.created_at,
           NEW.created_by)
          IS DISTINCT FROM
          (OLD.id, OLD.kind, OLD.wallet_id, OLD.from_wallet_id, OLD.to_wallet_id, OLD.currency,
           OLD.amount, OLD.fee, OLD.reference, OLD.metadata, OLD.available_at, OLD.created_at,
           OLD.created_by)
    THEN
        RAISE EXCEPTION USING
            ERRCODE = 'WR500',
            MESSAGE = format('transaction %s cannot change from %s', OLD.id, OLD.status),
            DETAIL  = 'Only a scheduled deposit may change, and only its status, posted_at, failure_reason and history_seq.';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER transactions_only_scheduled_change
    BEFORE UPDATE ON wallet.transactions
    FOR EACH ROW EXECUTE FUNCTION wallet.guard_transaction_update();

-- Derived balances of the system accounts, per currency. The outside world's balance is
-- the negative of all money inside the system; revenue is the commission earned.
CREATE VIEW wallet.system_account_balances AS
    SELECT account, currency, sum(net_amount)::bigint AS balance, count(*) AS entry_count
    FROM wallet.entries
    WHERE account IS NOT NULL
    GROUP BY account, currency;

-- The tamper-evident hash chain (see sql/chain.sql), checkpoints, an index-backed history,
-- and the sums of system accounts as numeric.
--
-- Existing ledgers are chained from their first fact on (the backfill below), so a
-- database upgraded from an earlier release verifies exactly as a fresh one. The hash
-- helpers are created here in their first version because the backfill needs them before
-- `wallet migrate` re-applies sql/; sql/chain.sql defines the same functions and
-- tests/sql/test_chain.py proves an upgraded ledger verifies clean.
-- depends: 0005_settlement_blocker_returns_its_sqlstate

-- A domain, not table CHECKs: PostgreSQL re-prepares every CHECK of a table for each INSERT
-- and UPDATE (see 0001), and these columns are written by every movement.
CREATE DOMAIN wallet.sha256 AS bytea CHECK (octet_length(VALUE) = 32);

ALTER TABLE wallet.wallets
    ADD COLUMN chain_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN chain_hash    wallet.sha256;

-- kind is the transaction's, repeated so that history filtered by kind reads one index
-- range; chain_version/chain_hash are the link of a merchant leg (NULL on system legs).
ALTER TABLE wallet.entries
    ADD COLUMN kind          text,
    ADD COLUMN chain_version bigint,
    ADD COLUMN chain_hash    wallet.sha256;

ALTER TABLE wallet.commission_rules ADD COLUMN chain_hash wallet.sha256;

-- Links of a wallet's chain that move no money: a deposit scheduled, canceled or failed
-- (pending_after is the wallet's pending after it), a wallet frozen, unfrozen or closed.
CREATE TABLE wallet.status_changes (
    wallet_id      uuid        NOT NULL REFERENCES wallet.wallets (id),
    chain_version  bigint      NOT NULL CHECK (chain_version >= 1),
    event          text        NOT NULL CHECK (event IN ('deposit_scheduled', 'deposit_canceled', 'deposit_failed',
                                                         'wallet_frozen', 'wallet_active', 'wallet_closed')),
    transaction_id uuid        REFERENCES wallet.transactions (id),
    pending_after  bigint      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    chain_hash     wallet.sha256 NOT NULL,
    PRIMARY KEY (wallet_id, chain_version),
    CONSTRAINT deposit_events_name_a_deposit CHECK ((event LIKE 'deposit\_%') = (transaction_id IS NOT NULL))
);

-- wallet.ledger_checkpoint(): every chain head at one moment, and the digest of them all
-- that operators keep outside the database.
CREATE TABLE wallet.checkpoints (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at          timestamptz NOT NULL DEFAULT now(),
    created_by          text        NOT NULL DEFAULT current_user,
    -- Entries with a higher id were not all visible to the checkpoint (see verify_ledger.sql).
    entry_watermark     bigint      NOT NULL,
    rule_count          bigint      NOT NULL,
    rule_chain_hash     wallet.sha256 NOT NULL,
    digest              wallet.sha256 NOT NULL
);

CREATE TABLE wallet.checkpoint_heads (
    -- Written just before its checkpoint row, in the same transaction.
    checkpoint_id   bigint      NOT NULL REFERENCES wallet.checkpoints (id) DEFERRABLE INITIALLY DEFERRED,
    wallet_id       uuid        NOT NULL,
    chain_version   bigint      NOT NULL,
    chain_hash      wallet.sha256 NOT NULL,
    -- When the head link was made (the wallet's updated_at): where its links continue.
    head_at         timestamptz NOT NULL,
    balance         bigint      NOT NULL,
    pending         bigint      NOT NULL,
    PRIMARY KEY (checkpoint_id, wallet_id)
);

CREATE TRIGGER status_changes_append_only
    BEFORE UPDATE OR DELETE ON wallet.status_changes
    FOR EACH ROW EXECUTE FUNCTION wallet.refuse_change();
CREATE TRIGGER status_changes_no_truncate
    BEFORE TRUNCATE ON wallet.status_changes
    FOR EACH STATEMENT EXECUTE FUNCTION wallet.refuse_change();
CREATE TRIGGER checkpoints_append_only
    BEFORE UPDATE OR DELETE ON wallet.checkpoints
    FOR EACH ROW EXECUTE FUNCTION wallet.refuse_change();
CREATE TRIGGER checkpoints_no_truncate
    BEFORE TRUNCATE ON wallet.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION wallet.refuse_change();
CREATE TRIGGER checkpoint_heads_append_only
    BEFORE UPDATE OR DELETE ON wallet.checkpoint_heads
    FOR EACH ROW EXECUTE FUNCTION wallet.refuse_change();
CREATE TRIGGER checkpoint_heads_no_truncate
    BEFORE TRUNCATE ON wallet.checkpoint_heads
    FOR EACH STATEMENT EXECUTE FUNCTION wallet.refuse_change();

-- The hash helpers, first version (sql/chain.sql has their headers).
CREATE FUNCTION wallet.epoch_us(p_at timestamptz)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT (date_part('epoch', p_at) * 1000000)::bigint
$$;

CREATE FUNCTION wallet.chain_genesis(p_wallet_id uuid, p_owner_id text, p_currency text, p_created_at timestamptz)
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT sha256(convert_to(ROW('wallet/v1', p_wallet_id, p_owner_id, p_currency, wallet.epoch_us(p_created_at))::text, 'UTF8'))
$$;

CREATE FUNCTION wallet.expected_legs(
    p_kind           text,
    p_wallet_id      uuid,
    p_from_wallet_id uuid,
    p_to_wallet_id   uuid,
    p_amount         bigint,
    p_fee            bigint
) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE p_kind
        WHEN 'deposit' THEN
            p_wallet_id || ':' || (p_amount - p_fee)
            || CASE WHEN p_fee <> 0 THEN ',revenue:' || p_fee ELSE '' END
            || ',world:' || -p_amount
        WHEN 'withdrawal' THEN
            p_wallet_id || ':' || -(p_amount + p_fee)
            || CASE WHEN p_fee <> 0 THEN ',revenue:' || p_fee ELSE '' END
            || ',world:' || p_amount
        WHEN 'transfer' THEN
            CASE WHEN p_from_wallet_id < p_to_wallet_id
                 THEN p_from_wallet_id || ':' || -(p_amount + p_fee) || ',' || p_to_wallet_id || ':' || p_amount
                 ELSE p_to_wallet_id || ':' || p_amount || ',' || p_from_wallet_id || ':' || -(p_amount + p_fee) END
            || CASE WHEN p_fee <> 0 THEN ',revenue:' || p_fee ELSE '' END
    END
$$;

CREATE FUNCTION wallet.transaction_digest(p_transaction wallet.transactions, p_legs text)
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT sha256(convert_to(
        ROW('transaction/v1', p_transaction.id, p_transaction.kind, p_transaction.wallet_id,
            p_transaction.from_wallet_id, p_transaction.to_wallet_id, p_transaction.currency,
            p_transaction.amount, p_transaction.fee, p_transaction.reference, p_transaction.metadata,
            wallet.epoch_us(p_transaction.available_at), wallet.epoch_us(p_transaction.created_at),
            p_transaction.created_by, p_legs)::text,
        'UTF8'))
$$;

CREATE FUNCTION wallet.chain_link(
    p_previous bytea,
    p_digest   bytea,
    p_version  bigint,
    p_after    bigint,
    p_event    text,
    p_at       timestamptz
) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT sha256(p_previous || p_digest || int8send(p_version) || int8send(p_after)
                  || int8send(wallet.epoch_us(p_at)) || convert_to(p_event, 'UTF8'))
$$;

CREATE FUNCTION wallet.rule_digest(p_rule wallet.commission_rules)
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT sha256(convert_to(
        ROW('rule/v1', p_rule.id, p_rule.operation, p_rule.owner_id, p_rule.rate_bps, p_rule.fixed,
            p_rule.min_fee, p_rule.max_fee, wallet.epoch_us(p_rule.created_at), p_rule.created_by)::text,
        'UTF8'))
$$;

CREATE FUNCTION wallet.rule_chain_genesis()
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT sha256(convert_to('commission_rules/v1', 'UTF8'))
$$;

CREATE FUNCTION wallet.chain_commission_rule()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_previous bytea;
BEGIN
    LOCK TABLE wallet.commission_rules IN SHARE ROW EXCLUSIVE MODE;
    SELECT chain_hash INTO v_previous FROM wallet.commission_rules ORDER BY id DESC LIMIT 1;
    NEW.chain_hash := wallet.chain_link(coalesce(v_previous, wallet.rule_chain_genesis()),
                                        wallet.rule_digest(NEW), 0, 0, 'rule', NEW.created_at);
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION wallet.epoch_us(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.chain_genesis(uuid, text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.expected_legs(text, uuid, uuid, uuid, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.transaction_digest(wallet.transactions, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.chain_link(bytea, bytea, bigint, bigint, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.rule_digest(wallet.commission_rules) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.rule_chain_genesis() FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.chain_commission_rule() FROM PUBLIC;

-- The backfill: facts are append-only, so their guards step aside for this one rewrite,
-- inside this migration's transaction.
ALTER TABLE wallet.entries DISABLE TRIGGER entries_append_only;
ALTER TABLE wallet.commission_rules DISABLE TRIGGER commission_rules_append_only;

-- Each wallet's entries get its transaction's kind, and created_at never earlier than the
-- wallet's previous entry (new entries are written so; see sql/posting.sql).
UPDATE wallet.entries AS e
SET kind = t.kind,
    created_at = ordered.created_at
FROM wallet.transactions AS t,
     (SELECT id, max(created_at) OVER (PARTITION BY wallet_id ORDER BY id) AS created_at
      FROM wallet.entries) AS ordered
WHERE t.id = e.transaction_id AND ordered.id = e.id;

-- Each wallet's links in the order they happened: its entries and its unposted deposits
-- (scheduled, canceled or failed, at their place in the history). A canceled or failed
-- deposit's earlier 'scheduled' link is not recreated; pending_after of a backfilled
-- status link is the wallet's pending now; a frozen or closed wallet gets one link for
-- its status last.
DO $$
DECLARE
    v_wallet  wallet.wallets;
    v_link    record;
    v_head    bytea;
    v_version bigint;
    v_event   text;
    v_link_at timestamptz;
    v_last_at timestamptz;
BEGIN
    FOR v_wallet IN SELECT * FROM wallet.wallets ORDER BY id LOOP
        v_head := wallet.chain_genesis(v_wallet.id, v_wallet.owner_id, v_wallet.currency, v_wallet.created_at);
        v_version := 0;
        v_link_at := NULL;
        v_last_at := NULL;
        FOR v_link IN
            SELECT link.*
            FROM (SELECT e.id AS seq, e.id AS entry_id, e.balance_after AS after, e.created_at, t AS transaction
                  FROM wallet.entries AS e JOIN wallet.transactions AS t ON t.id = e.transaction_id
                  WHERE e.wallet_id = v_wallet.id
                  UNION ALL
                  SELECT t.history_seq, NULL, v_wallet.pending, t.created_at, t
                  FROM wallet.transactions AS t
                  WHERE t.wallet_id = v_wallet.id AND t.status <> 'posted') AS link
            ORDER BY link.seq
        LOOP
            v_version := v_version + 1;
            v_event := CASE WHEN v_link.entry_id IS NOT NULL THEN 'posted'
                            ELSE 'deposit_' || (v_link.transaction).status END;
            -- Links are in time order too (entries were made so above; status links follow).
            v_link_at := greatest(v_link_at, v_link.created_at);
            v_last_at := CASE WHEN v_link.entry_id IS NOT NULL THEN v_link.created_at ELSE v_link_at END;
            v_head := wallet.chain_link(
                v_head,
                wallet.transaction_digest(v_link.transaction,
                    wallet.expected_legs((v_link.transaction).kind, (v_link.transaction).wallet_id,
                                         (v_link.transaction).from_wallet_id, (v_link.transaction).to_wallet_id,
                                         (v_link.transaction).amount, (v_link.transaction).fee)),
                v_version, v_link.after, v_event, v_last_at);
            IF v_link.entry_id IS NOT NULL THEN
                UPDATE wallet.entries SET chain_version = v_version, chain_hash = v_head WHERE id = v_link.entry_id;
            ELSE
                INSERT INTO wallet.status_changes (wallet_id, chain_version, event, transaction_id, pending_after,
                                                   created_at, chain_hash)
                VALUES (v_wallet.id, v_version, v_event, (v_link.transaction).id, v_link.after, v_last_at, v_head);
            END IF;
        END LOOP;
        IF v_wallet.status <> 'active' THEN
            v_version := v_version + 1;
            v_last_at := greatest(v_link_at, v_wallet.updated_at);
            v_head := wallet.chain_link(v_head, sha256(convert_to('wallet_' || v_wallet.status, 'UTF8')),
                                        v_version, 0, 'wallet_' || v_wallet.status, v_last_at);
            INSERT INTO wallet.status_changes (wallet_id, chain_version, event, pending_after, created_at, chain_hash)
            VALUES (v_wallet.id, v_version, 'wallet_' || v_wallet.status, 0, v_last_at, v_head);
        END IF;
        -- A wallet's updated_at is the time of its newest link from now on (as new links make it).
        UPDATE wallet.wallets
        SET chain_version = v_version, chain_hash = v_head, updated_at = coalesce(v_last_at, updated_at)
        WHERE id = v_wallet.id;
    END LOOP;
END
$$;

DO $$
DECLARE
    v_rule wallet.commission_rules;
    v_head bytea := wallet.rule_chain_genesis();
BEGIN
    FOR v_rule IN SELECT * FROM wallet.commission_rules ORDER BY id LOOP
        v_head := wallet.chain_link(v_head, wallet.rule_digest(v_rule), 0, 0, 'rule', v_rule.created_at);
        UPDATE wallet.commission_rules SET chain_hash = v_head WHERE id = v_rule.id;
    END LOOP;
END
$$;

ALTER TABLE wallet.entries ENABLE TRIGGER entries_append_only;
ALTER TABLE wallet.commission_rules ENABLE TRIGGER commission_rules_append_only;

CREATE TRIGGER commission_rules_chain
    BEFORE INSERT ON wallet.commission_rules
    FOR EACH ROW EXECUTE FUNCTION wallet.chain_commission_rule();

ALTER TABLE wallet.wallets ALTER COLUMN chain_hash SET NOT NULL;
ALTER TABLE wallet.entries ALTER COLUMN kind SET NOT NULL;
ALTER TABLE wallet.commission_rules ALTER COLUMN chain_hash SET NOT NULL;
-- That a merchant leg carries its link (and a system leg none) is the posting functions'
-- rule and verify_ledger's check (chain_version_gap, chain_link_mismatch), not a table
-- CHECK: the entries' CHECKs are prepared again for every movement's INSERT.

-- History: one index range per (wallet, kind), newest first; a page bounded by time
-- and by position reads only its rows. It replaces the (wallet_id, id) index.
CREATE INDEX entries_history_idx ON wallet.entries (wallet_id, kind, created_at DESC, id DESC)
    WHERE wallet_id IS NOT NULL;
DROP INDEX wallet.entries_wallet_history_idx;

-- The outside world's balance is minus all the money in the system: past 9.2 * 10^18 in
-- total it no longer fits a bigint, so the sums are numeric.
DROP VIEW wallet.system_account_balances;
CREATE VIEW wallet.system_account_balances AS
    SELECT account, currency, sum(net_amount) AS balance, count(*) AS entry_count
    FROM wallet.entries
    WHERE account IS NOT NULL
    GROUP BY account, currency;

-- apply_to_wallet now takes the transaction's digest and returns the wallet's new link
-- (sql/posting.sql).
DROP FUNCTION IF EXISTS wallet.apply_to_wallet(uuid, bigint, bigint);
CREATE TYPE wallet.wallet_link AS (
    balance       bigint,
    chain_version bigint,
    chain_hash    bytea,
    updated_at    timestamptz
);

-- The hash chain that makes the ledger tamper-evident.
--
-- Every wallet carries a SHA-256 chain: wallets.chain_hash is its head and chain_version
-- the number of links. A wallet's first head is its genesis (its id, owner, currency and
-- opening time). Each change to the wallet appends one link, computed in the same database
-- transaction as the change, on the wallet row that the change has already locked, so no
-- row is shared by all movements:
--   * a posted transaction: one link per merchant leg, stored on that leg's entry
--     (entries.chain_version, entries.chain_hash); it covers the whole transaction, every
--     leg included (system accounts too), and the wallet's balance after it;
--   * a change that moves no money (a deposit scheduled, canceled or failed, a wallet
--     frozen, unfrozen or closed): one row of wallet.status_changes.
-- Commission rules form one chain of their own (commission_rules.chain_hash), in id order.
--
--   link = sha256(previous head || transaction digest || version || amount after || time || event)
--
-- wallet.verify_ledger() recomputes every link from the rows as they are now, so an edit
-- of a posted fact shows as a broken link. Someone who can also rewrite the hashes (a
-- superuser who has read this file) can forge a consistent chain: against that, operators
-- store wallet.ledger_checkpoint()'s digest outside the database, and
-- wallet.verify_checkpoint() proves that every head it recorded is still in its chain
-- (see verify_ledger.sql).
--
-- Timestamps enter a digest as Unix microseconds and rows as their record text, so the
-- digest does not depend on the session's TimeZone or DateStyle. All helpers here are
-- internal: owner-only, called inside the ledger's SECURITY DEFINER functions, whose
-- search_path is pinned (see posting.sql).
--
-- The hash helpers are SQL functions declared STABLE, not IMMUTABLE: their bodies call
-- functions PostgreSQL rates STABLE (uuid || text, a row's text, date_part of a timestamptz),
-- and PostgreSQL inlines a SQL function into its caller's plan, which PL/pgSQL keeps for the
-- session, only when it claims no less than its body. Declared IMMUTABLE, each call was
-- planned anew: 0.3 ms of a transfer's 0.6.

-- wallet.epoch_us: a timestamp as Unix microseconds (NULL stays NULL).
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.epoch_us(p_at timestamptz)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT (date_part('epoch', p_at) * 1000000)::bigint
$$;

-- wallet.chain_genesis: the head of a wallet with no links.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.chain_genesis(p_wallet_id uuid, p_owner_id text, p_currency text, p_created_at timestamptz)
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT sha256(convert_to(ROW('wallet/v1', p_wallet_id, p_owner_id, p_currency, wallet.epoch_us(p_created_at))::text, 'UTF8'))
$$;

-- wallet.expected_legs: the legs a posted transaction of this row must have, in the
-- canonical order (merchant wallets by id, then revenue, then world), as
-- "<wallet id or account>:<net amount>" joined by commas. verify_ledger builds the same
-- text from the entries as they are and compares digests.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.expected_legs(
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

-- wallet.transaction_digest: SHA-256 of a transaction's fixed fields and its legs. The
-- fields that change when a scheduled deposit settles (status, posted_at, failure_reason,
-- history_seq) are not in it: the event of each link says what happened.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.transaction_digest(p_transaction wallet.transactions, p_legs text)
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

-- wallet.chain_link: the head after appending one link to p_previous. p_after is the
-- balance after a posting, the pending after a deposit's status change, 0 otherwise; p_at
-- is when the link was made (the entry's or status change's created_at), so a fact cannot
-- be moved to another day either.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.chain_link(
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

-- wallet.rule_digest: SHA-256 of a commission rule's fields.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.rule_digest(p_rule wallet.commission_rules)
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT sha256(convert_to(
        ROW('rule/v1', p_rule.id, p_rule.operation, p_rule.owner_id, p_rule.rate_bps, p_rule.fixed,
            p_rule.min_fee, p_rule.max_fee, wallet.epoch_us(p_rule.created_at), p_rule.created_by)::text,
        'UTF8'))
$$;

-- wallet.rule_chain_genesis: the head of the rule chain before its first rule.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.rule_chain_genesis()
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT sha256(convert_to('commission_rules/v1', 'UTF8'))
$$;

-- wallet.chain_commission_rule: BEFORE INSERT on commission_rules. Appends the new rule
-- to the rule chain. Rule changes are rare and never on a movement's path, so they take
-- turns on a table lock (SHARE ROW EXCLUSIVE: movements only read the table, which it
-- does not block) and each sees the newest head.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.chain_commission_rule()
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

-- wallet.append_status_link: record a change that moves no money as the next link of the
-- wallet's chain, and add p_pending_change to its pending. The caller holds, or this
-- UPDATE takes, the wallet row lock. p_transaction is the deposit concerned (NULL for a
-- change of the wallet's own status). Returns the wallet row after the change.
-- Raises: WS409 wallet_not_active (p_require_active and the wallet is not active),
--         WL422 balance_limit_exceeded (pending would pass 10^18).
CREATE OR REPLACE FUNCTION wallet.append_status_link(
    p_wallet_id      uuid,
    p_event          text,
    p_transaction    wallet.transactions,
    p_pending_change bigint,
    p_require_active boolean,
    p_status         text DEFAULT NULL
) RETURNS wallet.wallets
LANGUAGE plpgsql
AS $$
DECLARE
    v_digest bytea := CASE WHEN p_transaction.id IS NULL
                           THEN sha256(convert_to(p_event, 'UTF8'))
                           ELSE wallet.transaction_digest(p_transaction,
                                    wallet.expected_legs(p_transaction.kind, p_transaction.wallet_id,
                                                         p_transaction.from_wallet_id, p_transaction.to_wallet_id,
                                                         p_transaction.amount, p_transaction.fee)) END;
    v_wallet wallet.wallets;
    -- Never earlier than the wallet's previous link: greatest() is re-evaluated on the
    -- newest row version after a lock wait.
    v_at     timestamptz := clock_timestamp();
BEGIN
    LOOP
        UPDATE wallet.wallets
        SET pending       = pending + p_pending_change,
            status        = coalesce(p_status, status),
            chain_version = chain_version + 1,
            chain_hash    = wallet.chain_link(chain_hash, v_digest, chain_version + 1,
                                              pending + p_pending_change, p_event, greatest(updated_at, v_at)),
            updated_at    = greatest(updated_at, v_at)
        WHERE id = p_wallet_id
          AND (status = 'active' OR NOT p_require_active)
          AND pending + p_pending_change <= wallet.max_balance()
        RETURNING * INTO v_wallet;
        EXIT WHEN FOUND;

        -- As in apply_to_wallet: say why from the row as it is now, locked, or go round.
        SELECT * INTO STRICT v_wallet FROM wallet.wallets WHERE id = p_wallet_id FOR NO KEY UPDATE;
        IF p_require_active AND v_wallet.status <> 'active' THEN
            RAISE EXCEPTION USING ERRCODE = 'WS409', MESSAGE = format('wallet is %s', v_wallet.status),
                DETAIL = format('wallet %s', p_wallet_id);
        END IF;
        IF v_wallet.pending + p_pending_change > wallet.max_balance() THEN
            RAISE EXCEPTION USING ERRCODE = 'WL422',
                MESSAGE = 'the wallet''s pending deposits would exceed the maximum of 10^18',
                DETAIL = format('wallet %s has %s pending', p_wallet_id, v_wallet.pending);
        END IF;
    END LOOP;
    INSERT INTO wallet.status_changes (wallet_id, chain_version, event, transaction_id, pending_after, created_at, chain_hash)
    VALUES (p_wallet_id, v_wallet.chain_version, p_event, p_transaction.id, v_wallet.pending, v_wallet.updated_at,
            v_wallet.chain_hash);
    RETURN v_wallet;
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
REVOKE ALL ON FUNCTION wallet.append_status_link(uuid, text, wallet.transactions, bigint, boolean, text) FROM PUBLIC;

-- Posting: the only code that changes a wallet's balance, and the helpers every movement
-- shares. Each movement writes its own entries (its legs are its meaning), in one INSERT.
--
-- Internal helpers (here, in checks.sql, commission_fee.sql, compute_fee, the idempotency
-- and wallet-status helpers, and the settlement steps) may be executed by their owner only:
-- they run inside a SECURITY DEFINER function whose search_path is already pinned, so they
-- do not set it again. Each SET search_path costs PostgreSQL two search-path recomputations
-- per call; on every helper of a transfer that was about an eighth of its CPU.

-- wallet.transaction_kinds: every transaction kind, the one list that queries over all
-- kinds (an index range per kind) read, as the domain wallet.transaction_kind allows.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.transaction_kinds()
RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ARRAY['deposit', 'withdrawal', 'transfer']
$$;

-- wallet.require_read_committed: the writing functions lock a row and re-check it in one
-- UPDATE, which READ COMMITTED re-evaluates on the newest row version after a wait. Under
-- REPEATABLE READ or SERIALIZABLE the same UPDATE fails with a serialization error
-- whenever another transaction changed the row first (most hot-wallet movements would),
-- so they refuse to run there at all, with a code that says why.
-- Raises: WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.require_read_committed()
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION USING ERRCODE = 'WT500',
            MESSAGE = format('the ledger functions that write need READ COMMITTED, not %s',
                             upper(current_setting('transaction_isolation'))),
            HINT = 'Call them in a READ COMMITTED transaction (PostgreSQL''s default).';
    END IF;
END
$$;

-- wallet.apply_to_wallet: add p_net_amount to one wallet's balance (and p_pending_change
-- to its pending, for a settling deposit), append the posting's link to the wallet's
-- hash chain (see chain.sql; p_digest is the transaction's digest), and return the
-- wallet's balance, link and time after. The caller then writes all the entries of its
-- transaction in one INSERT, with balance_before/after and the link.
-- Locks: the wallet row, by the UPDATE itself, until the caller's transaction ends.
-- Callers changing two wallets call this in wallet id order, so opposite transfers wait
-- for each other instead of deadlocking.
-- A debit applies only while the wallet's available (its balance less what its active holds
-- reserve, held) covers it, a credit only while the balance stays within 10^18 (so the sum
-- can never overflow); the check and the write are one statement, re-checked by PostgreSQL
-- on the newest row version after any wait. So no race spends held money (and the CHECK
-- held_within_balance would refuse it anyway).
-- updated_at is the clock, but never earlier than the wallet's last change (greatest() is
-- re-evaluated on the newest row version after a lock wait), so a wallet's entries are in
-- the same order by created_at as by id: history can then bound a page by time and by
-- position with one index range. The link covers that time.
-- Raises: WS409 wallet_not_active, WF422 insufficient_funds, WL422 balance_limit_exceeded.
CREATE OR REPLACE FUNCTION wallet.apply_to_wallet(
    p_wallet_id      uuid,
    p_net_amount     bigint,
    p_digest         bytea,
    p_pending_change bigint DEFAULT 0
) RETURNS wallet.wallet_link
LANGUAGE plpgsql
AS $$
DECLARE
    v_link   wallet.wallet_link;
    v_wallet wallet.wallets;
    v_at     timestamptz := clock_timestamp();
BEGIN
    LOOP
        UPDATE wallet.wallets
        SET balance       = balance + p_net_amount,
            pending       = pending + p_pending_change,
            chain_version = chain_version + 1,
            chain_hash    = wallet.chain_link(chain_hash, p_digest, chain_version + 1, balance + p_net_amount,
                                              'posted', greatest(updated_at, v_at)),
            updated_at    = greatest(updated_at, v_at)
        WHERE id = p_wallet_id
          AND status = 'active'
          AND balance + p_net_amount - held >= 0
          AND balance + p_net_amount <= wallet.max_balance()
        RETURNING balance, chain_version, chain_hash, updated_at INTO v_link;
        EXIT WHEN FOUND;

        -- Say why from the row locked as it is now: a freeze may have come and gone since the
        -- UPDATE read it. If nothing stops it any more, go round: the lock is ours now.
        SELECT * INTO STRICT v_wallet FROM wallet.wallets WHERE id = p_wallet_id FOR NO KEY UPDATE;
        IF v_wallet.status <> 'active' THEN
            RAISE EXCEPTION USING ERRCODE = 'WS409', MESSAGE = format('wallet is %s', v_wallet.status),
                DETAIL = format('wallet %s', p_wallet_id);
        END IF;
        IF v_wallet.balance + p_net_amount > wallet.max_balance() THEN
            RAISE EXCEPTION USING ERRCODE = 'WL422', MESSAGE = 'the wallet would exceed the maximum balance of 10^18',
                DETAIL = format('wallet %s', p_wallet_id);
        END IF;
        IF v_wallet.balance + p_net_amount - v_wallet.held < 0 THEN
            RAISE EXCEPTION USING ERRCODE = 'WF422', MESSAGE = 'insufficient funds',
                DETAIL = format('wallet %s has %s available (%s held), %s needed',
                                p_wallet_id, v_wallet.balance - v_wallet.held, v_wallet.held, -p_net_amount);
        END IF;
    END LOOP;
    RETURN v_link;
END
$$;

-- wallet.to_transaction_result: the API's view of a transaction row.
-- Each attribute is set by name, never built positionally (ROW(...)::wallet.transaction_result):
-- a later release may then add an attribute to the type and still roll back to this one,
-- whose body, re-applied, leaves the new attribute NULL instead of failing every call.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.to_transaction_result(p_transaction wallet.transactions, p_replayed boolean)
RETURNS wallet.transaction_result
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_result wallet.transaction_result;
BEGIN
    v_result.id             := p_transaction.id;
    v_result.kind           := p_transaction.kind;
    v_result.status         := p_transaction.status;
    v_result.wallet_id      := p_transaction.wallet_id;
    v_result.from_wallet_id := p_transaction.from_wallet_id;
    v_result.to_wallet_id   := p_transaction.to_wallet_id;
    v_result.currency       := p_transaction.currency;
    v_result.amount         := p_transaction.amount;
    v_result.fee            := p_transaction.fee;
    v_result.reference      := p_transaction.reference;
    v_result.metadata       := p_transaction.metadata;
    v_result.available_at   := p_transaction.available_at;
    v_result.created_at     := p_transaction.created_at;
    v_result.posted_at      := p_transaction.posted_at;
    v_result.failure_reason := p_transaction.failure_reason;
    v_result.replayed       := p_replayed;
    RETURN v_result;
END
$$;

-- wallet.to_transaction_result_v2: wallet.to_transaction_result and the hold a capture drew
-- on (hold_id), set by name as there.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.to_transaction_result_v2(p_transaction wallet.transactions, p_replayed boolean)
RETURNS wallet.transaction_result_v2
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_result wallet.transaction_result_v2;
BEGIN
    v_result.id             := p_transaction.id;
    v_result.kind           := p_transaction.kind;
    v_result.status         := p_transaction.status;
    v_result.wallet_id      := p_transaction.wallet_id;
    v_result.from_wallet_id := p_transaction.from_wallet_id;
    v_result.to_wallet_id   := p_transaction.to_wallet_id;
    v_result.currency       := p_transaction.currency;
    v_result.amount         := p_transaction.amount;
    v_result.fee            := p_transaction.fee;
    v_result.reference      := p_transaction.reference;
    v_result.metadata       := p_transaction.metadata;
    v_result.available_at   := p_transaction.available_at;
    v_result.created_at     := p_transaction.created_at;
    v_result.posted_at      := p_transaction.posted_at;
    v_result.failure_reason := p_transaction.failure_reason;
    v_result.hold_id        := p_transaction.hold_id;
    v_result.replayed       := p_replayed;
    RETURN v_result;
END
$$;

-- wallet.replayed_transaction: a stored first response, returned again.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.replayed_transaction(p_response jsonb)
RETURNS wallet.transaction_result
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN jsonb_populate_record(NULL::wallet.transaction_result, p_response || '{"replayed": true}');
END
$$;

-- wallet.replayed_transaction_v2: a stored first response of a capture, returned again.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.replayed_transaction_v2(p_response jsonb)
RETURNS wallet.transaction_result_v2
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN jsonb_populate_record(NULL::wallet.transaction_result_v2, p_response || '{"replayed": true}');
END
$$;

-- wallet.post_withdrawal: write the withdrawal p_transaction (posted, not yet written) and
-- post it: the wallet is debited amount + fee (wallet.apply_to_wallet), the outside world
-- receives amount and commission revenue the fee, all legs in one INSERT. Shared by
-- wallet.withdraw and wallet.capture_hold.
-- Locks: the wallet row (in wallet.apply_to_wallet).
-- Raises: WS409 wallet_not_active, WF422 insufficient_funds.
CREATE OR REPLACE FUNCTION wallet.post_withdrawal(p_transaction wallet.transactions)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_debit bigint := p_transaction.amount + p_transaction.fee;
    v_after wallet.wallet_link;
BEGIN
    INSERT INTO wallet.transactions VALUES (p_transaction.*);
    v_after := wallet.apply_to_wallet(p_transaction.wallet_id, -v_debit,
                   wallet.transaction_digest(p_transaction,
                       wallet.expected_legs('withdrawal', p_transaction.wallet_id, NULL, NULL,
                                            p_transaction.amount, p_transaction.fee)));
    INSERT INTO wallet.entries (transaction_id, wallet_id, account, currency, kind, net_amount,
                                balance_before, balance_after, chain_version, chain_hash, created_at)
    SELECT p_transaction.id, leg.wallet_id, leg.account, p_transaction.currency, 'withdrawal', leg.net_amount,
           leg.balance_after - leg.net_amount, leg.balance_after, leg.chain_version, leg.chain_hash, v_after.updated_at
    FROM (VALUES (p_transaction.wallet_id, NULL, -v_debit, v_after.balance, v_after.chain_version, v_after.chain_hash),
                 (NULL::uuid, 'world', p_transaction.amount, NULL::bigint, NULL::bigint, NULL::bytea),
                 (NULL, 'revenue', p_transaction.fee, NULL, NULL, NULL))
         AS leg (wallet_id, account, net_amount, balance_after, chain_version, chain_hash)
    WHERE leg.net_amount <> 0;
END
$$;

-- wallet.post_transfer: write the transfer p_transaction (posted, not yet written) and post
-- it: the sender is debited amount + fee, the receiver credited amount, commission revenue
-- the fee, both wallets changed in wallet id order (wallet.apply_to_wallet), all legs in one
-- INSERT. Shared by wallet.transfer and wallet.capture_hold.
-- Locks: both wallet rows, lower id first (in wallet.apply_to_wallet), so two opposite
-- transfers wait for each other instead of deadlocking.
-- Raises: WS409 wallet_not_active, WF422 insufficient_funds, WL422 balance_limit_exceeded.
CREATE OR REPLACE FUNCTION wallet.post_transfer(p_transaction wallet.transactions)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_from_id    uuid   := p_transaction.from_wallet_id;
    v_to_id      uuid   := p_transaction.to_wallet_id;
    v_debit      bigint := p_transaction.amount + p_transaction.fee;
    v_digest     bytea;
    v_from_after wallet.wallet_link;
    v_to_after   wallet.wallet_link;
BEGIN
    INSERT INTO wallet.transactions VALUES (p_transaction.*);
    v_digest := wallet.transaction_digest(p_transaction,
                    wallet.expected_legs('transfer', NULL, v_from_id, v_to_id, p_transaction.amount, p_transaction.fee));
    IF v_from_id < v_to_id THEN
        v_from_after := wallet.apply_to_wallet(v_from_id, -v_debit, v_digest);
        v_to_after   := wallet.apply_to_wallet(v_to_id, p_transaction.amount, v_digest);
    ELSE
        v_to_after   := wallet.apply_to_wallet(v_to_id, p_transaction.amount, v_digest);
        v_from_after := wallet.apply_to_wallet(v_from_id, -v_debit, v_digest);
    END IF;
    INSERT INTO wallet.entries (transaction_id, wallet_id, account, currency, kind, net_amount,
                                balance_before, balance_after, chain_version, chain_hash, created_at)
    SELECT p_transaction.id, leg.wallet_id, leg.account, p_transaction.currency, 'transfer', leg.net_amount,
           leg.balance_after - leg.net_amount, leg.balance_after, leg.chain_version, leg.chain_hash, leg.created_at
    FROM (VALUES (v_from_id, NULL, -v_debit, v_from_after.balance, v_from_after.chain_version,
                  v_from_after.chain_hash, v_from_after.updated_at),
                 (v_to_id, NULL, p_transaction.amount, v_to_after.balance, v_to_after.chain_version,
                  v_to_after.chain_hash, v_to_after.updated_at),
                 (NULL::uuid, 'revenue', p_transaction.fee, NULL::bigint, NULL::bigint, NULL::bytea,
                  greatest(v_from_after.updated_at, v_to_after.updated_at)))
         AS leg (wallet_id, account, net_amount, balance_after, chain_version, chain_hash, created_at)
    WHERE leg.net_amount <> 0;
END
$$;

-- wallet.find_wallet: a wallet read without a lock, for what never changes (owner,
-- currency).
-- Raises: WN404 not_found (it does not exist, or belongs to another owner).
CREATE OR REPLACE FUNCTION wallet.find_wallet(p_acting_owner_id text, p_wallet_id uuid)
RETURNS wallet.wallets
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_wallet wallet.wallets;
BEGIN
    SELECT * INTO v_wallet FROM wallet.wallets WHERE id = p_wallet_id;
    IF NOT FOUND OR v_wallet.owner_id <> coalesce(p_acting_owner_id, v_wallet.owner_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'WN404', MESSAGE = 'wallet not found',
            DETAIL = format('wallet %s', p_wallet_id);
    END IF;
    RETURN v_wallet;
END
$$;

REVOKE ALL ON FUNCTION wallet.transaction_kinds() FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.require_read_committed() FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.apply_to_wallet(uuid, bigint, bytea, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.to_transaction_result(wallet.transactions, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.to_transaction_result_v2(wallet.transactions, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.replayed_transaction(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.replayed_transaction_v2(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.post_withdrawal(wallet.transactions) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.post_transfer(wallet.transactions) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.find_wallet(text, uuid) FROM PUBLIC;

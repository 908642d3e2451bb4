-- Auditing the ledger: wallet.verify_ledger (everything, from the facts),
-- wallet.ledger_checkpoint (every chain head, and a digest to keep outside the database),
-- wallet.verify_checkpoint (is every head of a kept digest still in its chain?) and
-- wallet.verify_ledger_since (the chains and sums from a trusted checkpoint on, for
-- nightly runs on big ledgers).
--
-- They read every row they check: audits, not request-path calls. Only wallet_auditor
-- may run them (the API's /v1/ledger/verify sets that role and a statement_timeout for
-- the call; `wallet verify` sets a timeout too). PostgreSQL ignores a statement_timeout
-- set on a function, so the caller brings the time limit. They run with jit off: their
-- queries look expensive enough for PostgreSQL to JIT-compile them, which took longer (about
-- 3 s here) than verify_ledger_since needs for a day of activity. Each returns one row
-- (check_name, detail) per violation and none when the ledger is sound. Locks nothing.

-- wallet.verify_pending_signs_and_rules: the checks both audits run over the whole ledger,
-- cheap at any size (the partial index of scheduled deposits, the active holds, one row per
-- wallet, the rules): pending_differs_from_scheduled, held_differs_from_holds,
-- negative_balance, and rule_chain_broken for the rules after the first p_rules_after (0: all
-- of them; the chain still runs from the first).
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.verify_pending_signs_and_rules(p_rules_after bigint)
RETURNS TABLE (check_name text, detail text)
LANGUAGE sql STABLE
AS $$
    SELECT 'pending_differs_from_scheduled',
           format('wallet %s: pending %s, scheduled deposits sum to %s', w.id, w.pending, coalesce(scheduled.total, 0))
    FROM wallet.wallets AS w
    LEFT JOIN (SELECT wallet_id, sum(amount - fee) AS total
               FROM wallet.transactions WHERE status = 'scheduled' GROUP BY wallet_id) AS scheduled
           ON scheduled.wallet_id = w.id
    WHERE w.pending <> coalesce(scheduled.total, 0)

    UNION ALL
    SELECT 'held_differs_from_holds',
           format('wallet %s: held %s, its active holds reserve %s', w.id, w.held, coalesce(active.total, 0))
    FROM wallet.wallets AS w
    LEFT JOIN (SELECT wallet_id, sum(remaining) AS total
               FROM wallet.holds WHERE status = 'active' GROUP BY wallet_id) AS active
           ON active.wallet_id = w.id
    WHERE w.held <> coalesce(active.total, 0)

    UNION ALL
    SELECT 'negative_balance', format('wallet %s: balance %s, pending %s', id, balance, pending)
    FROM wallet.wallets
    WHERE balance < 0 OR pending < 0

    UNION ALL
    SELECT 'rule_chain_broken', format('commission rule %s does not hash to its stored value', (r.rule).id)
    FROM (SELECT rule, lag(rule.chain_hash) OVER (ORDER BY rule.id) AS previous_hash,
                 row_number() OVER (ORDER BY rule.id) AS position
          FROM wallet.commission_rules AS rule) AS r
    WHERE r.position > p_rules_after
      AND (r.rule).chain_hash IS DISTINCT FROM wallet.chain_link(
              coalesce(r.previous_hash, wallet.rule_chain_genesis()), wallet.rule_digest(r.rule), 0, 0, 'rule',
              (r.rule).created_at)
$$;

-- wallet.verify_ledger: every way the ledger could be inconsistent or rewritten.
--
--   transaction_unbalanced     a transaction's entries do not sum to zero
--   transaction_entries        a posted transaction without entries, or an unposted one with some
--   transaction_unchained      an entry whose transaction is missing, or a posted transaction with
--                              no merchant leg: no wallet chain covers it (balanced orphan entries)
--   revenue_differs_from_fee   a transaction's revenue leg is not its fee
--   balance_differs_from_entries  a wallet's balance is not the sum of its entries
--   pending_differs_from_scheduled  a wallet's pending is not the sum of its scheduled deposits
--   held_differs_from_holds    a wallet's held is not the sum of its active holds' remaining
--   hold_captures_differ       a hold's captured_amount is not the sum of its captures' amounts,
--                              or a capture drew on a hold of another wallet
--   negative_balance           a wallet below zero
--   entry_chain_broken         an entry's balance_before is not the previous entry's balance_after
--   chain_link_mismatch        a link's hash is not what its transaction, legs, version and
--                              previous link give: a posted fact, or a wallet's genesis, was edited
--   chain_version_gap          a wallet's links are not numbered 1, 2, 3, ... (one was deleted or added)
--   chain_head_mismatch        a wallet's head (chain_version, chain_hash, updated_at) is not its newest link
--   status_differs_from_chain  a transaction's or wallet's status is not what its newest link
--                              says (a canceled deposit made scheduled again, a wallet unfrozen)
--   rule_chain_broken          a commission rule's hash is not what its fields and the previous rule give
-- Raises: nothing (it returns each violation as a row).
CREATE OR REPLACE FUNCTION wallet.verify_ledger()
RETURNS TABLE (check_name text, detail text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    WITH legs AS (
        -- One pass over the entries, grouped by transaction, for every per-transaction check.
        SELECT transaction_id,
               string_agg(coalesce(wallet_id::text, account) || ':' || net_amount, ','
                          ORDER BY wallet_id NULLS LAST, account) AS legs,
               sum(net_amount) AS total,
               coalesce(sum(net_amount) FILTER (WHERE account = 'revenue'), 0) AS revenue,
               count(*) AS entry_count,
               count(wallet_id) AS merchant_legs
        FROM wallet.entries
        GROUP BY transaction_id
    ),
    links AS (
        SELECT e.wallet_id, e.chain_version, e.chain_hash, 'posted' AS event, e.balance_after AS after,
               e.transaction_id, e.created_at
        FROM wallet.entries AS e
        WHERE e.wallet_id IS NOT NULL
        UNION ALL
        SELECT s.wallet_id, s.chain_version, s.chain_hash, s.event, s.pending_after, s.transaction_id, s.created_at
        FROM wallet.status_changes AS s
    ),
    chained AS (
        SELECT l.*,
               lag(l.chain_hash) OVER by_version AS previous_hash,
               row_number() OVER by_version AS position,
               row_number() OVER (PARTITION BY l.wallet_id ORDER BY l.chain_version DESC) = 1 AS newest
        FROM links AS l
        WINDOW by_version AS (PARTITION BY l.wallet_id ORDER BY l.chain_version)
    ),
    checked_transactions AS (
        -- Each transaction beside its entries, with the digest its posting links must carry
        -- (computed once, not once per wallet of a transfer).
        SELECT coalesce(t.id, legs.transaction_id) AS id, t.status, t.fee, t.amount, t.hold_id,
               coalesce(t.wallet_id, t.from_wallet_id) AS paying_wallet_id,
               legs.transaction_id IS NOT NULL AS has_entries,
               legs.total, legs.revenue, legs.entry_count, legs.merchant_legs,
               CASE WHEN legs.legs IS NOT NULL AND t.id IS NOT NULL
                    THEN wallet.transaction_digest(t, legs.legs) END AS posted_digest
        FROM wallet.transactions AS t
        FULL JOIN legs ON legs.transaction_id = t.id
    )
    SELECT 'transaction_unbalanced', format('transaction %s: entries sum to %s', id, total)
    FROM checked_transactions
    WHERE total <> 0

    UNION ALL
    SELECT 'transaction_entries', format('transaction %s is %s with %s entries', id, status, coalesce(entry_count, 0))
    FROM checked_transactions
    WHERE status IS NOT NULL AND (status = 'posted') <> has_entries

    UNION ALL
    SELECT 'transaction_unchained', format('entries name transaction %s, which does not exist', id)
    FROM checked_transactions
    WHERE status IS NULL

    UNION ALL
    SELECT 'transaction_unchained', format('transaction %s is posted but no wallet chain covers it', id)
    FROM checked_transactions
    WHERE status = 'posted' AND has_entries AND merchant_legs = 0

    UNION ALL
    SELECT 'revenue_differs_from_fee', format('transaction %s: fee %s, revenue entries %s', id, fee, coalesce(revenue, 0))
    FROM checked_transactions
    WHERE status = 'posted' AND fee <> coalesce(revenue, 0)

    UNION ALL
    SELECT 'balance_differs_from_entries',
           format('wallet %s: balance %s, entries sum to %s', w.id, w.balance, coalesce(posted.total, 0))
    FROM wallet.wallets AS w
    LEFT JOIN (SELECT wallet_id, sum(net_amount) AS total
               FROM wallet.entries WHERE wallet_id IS NOT NULL GROUP BY wallet_id) AS posted
           ON posted.wallet_id = w.id
    WHERE w.balance <> coalesce(posted.total, 0)


    UNION ALL
    SELECT 'entry_chain_broken',
           format('wallet %s entry %s: balance_before %s, previous balance_after %s',
                  wallet_id, id, balance_before, previous_balance_after)
    FROM (SELECT wallet_id, id, balance_before,
                 coalesce(lag(balance_after) OVER (PARTITION BY wallet_id ORDER BY id), 0) AS previous_balance_after
          FROM wallet.entries
          WHERE wallet_id IS NOT NULL) AS chain
    WHERE balance_before <> previous_balance_after

    UNION ALL
    SELECT 'chain_link_mismatch',
           format('wallet %s link %s (%s%s) does not hash to its stored value',
                  c.wallet_id, c.chain_version, c.event, ' of transaction ' || c.transaction_id)
    FROM chained AS c
    LEFT JOIN wallet.wallets AS w ON w.id = c.wallet_id
    LEFT JOIN checked_transactions AS posted ON posted.id = c.transaction_id AND c.event = 'posted'
    WHERE c.chain_hash IS DISTINCT FROM wallet.chain_link(
              coalesce(c.previous_hash, wallet.chain_genesis(w.id, w.owner_id, w.currency, w.created_at)),
              CASE WHEN c.transaction_id IS NULL THEN sha256(convert_to(c.event, 'UTF8'))
                   WHEN c.event = 'posted' THEN posted.posted_digest
                   ELSE (SELECT wallet.transaction_digest(t, wallet.expected_legs(t.kind, t.wallet_id, t.from_wallet_id,
                                                                                  t.to_wallet_id, t.amount, t.fee))
                         FROM wallet.transactions AS t WHERE t.id = c.transaction_id) END,
              c.chain_version, c.after, c.event, c.created_at)

    UNION ALL
    SELECT 'chain_version_gap',
           format('wallet %s: link %s is number %s of its chain', wallet_id, chain_version, position)
    FROM chained
    WHERE chain_version <> position

    UNION ALL
    SELECT 'chain_head_mismatch',
           format('wallet %s: head at version %s, newest link %s', w.id, w.chain_version, coalesce(c.chain_version, 0))
    FROM wallet.wallets AS w
    LEFT JOIN chained AS c ON c.wallet_id = w.id AND c.newest
    WHERE w.chain_version <> coalesce(c.chain_version, 0)
       OR w.chain_hash <> coalesce(c.chain_hash, wallet.chain_genesis(w.id, w.owner_id, w.currency, w.created_at))
       OR w.updated_at <> coalesce(c.created_at, w.updated_at)

    UNION ALL
    SELECT 'status_differs_from_chain',
           format('transaction %s is %s, its chain says %s', t.id, t.status, coalesce(newest.event, 'nothing'))
    FROM wallet.transactions AS t
    LEFT JOIN (SELECT DISTINCT ON (transaction_id) transaction_id, event
               FROM links WHERE transaction_id IS NOT NULL
               ORDER BY transaction_id, chain_version DESC) AS newest
           ON newest.transaction_id = t.id
    WHERE newest.event IS DISTINCT FROM CASE t.status WHEN 'posted' THEN 'posted' ELSE 'deposit_' || t.status END
      AND (t.status <> 'posted' OR newest.event IS NOT NULL)  -- a posted one with no link is transaction_unchained

    UNION ALL
    SELECT 'status_differs_from_chain',
           format('wallet %s is %s, its chain says %s', w.id, w.status, coalesce(newest.event, 'wallet_active'))
    FROM wallet.wallets AS w
    LEFT JOIN (SELECT DISTINCT ON (wallet_id) wallet_id, event
               FROM wallet.status_changes WHERE event LIKE 'wallet\_%'
               ORDER BY wallet_id, chain_version DESC) AS newest
           ON newest.wallet_id = w.id
    WHERE 'wallet_' || w.status <> coalesce(newest.event, 'wallet_active')

    UNION ALL
    SELECT 'hold_captures_differ',
           format('hold %s of wallet %s: captured_amount %s, its captures sum to %s, %s of them from another wallet',
                  coalesce(h.id, c.hold_id), h.wallet_id, h.captured_amount, coalesce(sum(c.amount), 0),
                  count(*) FILTER (WHERE c.hold_id IS NOT NULL AND c.paying_wallet_id IS DISTINCT FROM h.wallet_id))
    FROM wallet.holds AS h
    FULL JOIN (SELECT hold_id, amount, paying_wallet_id FROM checked_transactions WHERE hold_id IS NOT NULL) AS c
           ON c.hold_id = h.id
    GROUP BY coalesce(h.id, c.hold_id), h.wallet_id, h.captured_amount
    HAVING h.captured_amount IS DISTINCT FROM coalesce(sum(c.amount), 0)
        OR bool_or(c.hold_id IS NOT NULL AND c.paying_wallet_id IS DISTINCT FROM h.wallet_id)

    UNION ALL
    SELECT * FROM wallet.verify_pending_signs_and_rules(0)
$$;

-- wallet.checkpoint_digest: the digest of one checkpoint's heads (in wallet id order) and
-- of its rule chain head. Reads the stored heads only.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.checkpoint_digest(p_checkpoint_id bigint, p_rule_count bigint, p_rule_chain_hash bytea)
RETURNS bytea
LANGUAGE sql STABLE
AS $$
    SELECT sha256(
        coalesce((SELECT string_agg(uuid_send(h.wallet_id) || int8send(h.chain_version) || h.chain_hash
                                    || int8send(h.balance) || int8send(h.pending), ''::bytea ORDER BY h.wallet_id)
                  FROM wallet.checkpoint_heads AS h
                  WHERE h.checkpoint_id = p_checkpoint_id), ''::bytea)
        || int8send(p_rule_count) || p_rule_chain_hash)
$$;

-- wallet.ledger_checkpoint: record every wallet's chain head (version, hash, time of its
-- newest link, balance, pending) and the rule chain's, and return the digest of them all
-- as 'v1:<checkpoint id>:<sha256 hex>'. Operators keep that string outside the database
-- (a ticket, a log, a WORM bucket): wallet.verify_checkpoint proves later that the ledger
-- still extends what it saw. Every head is a committed state of its wallet. Locks nothing.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.ledger_checkpoint()
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id              bigint := nextval(pg_get_serial_sequence('wallet.checkpoints', 'id'));
    v_watermark       bigint;
    v_rule_count      bigint;
    v_rule_chain_hash bytea;
    v_digest          bytea;
BEGIN
    -- Taken before the heads: an entry above it is newer than every head that covers it.
    SELECT coalesce(max(id), 0) INTO v_watermark FROM wallet.entries;
    INSERT INTO wallet.checkpoint_heads (checkpoint_id, wallet_id, chain_version, chain_hash, head_at, balance, pending)
    SELECT v_id, id, chain_version, chain_hash, updated_at, balance, pending FROM wallet.wallets;
    SELECT count(*), coalesce((array_agg(chain_hash ORDER BY id DESC))[1], wallet.rule_chain_genesis())
    INTO v_rule_count, v_rule_chain_hash
    FROM wallet.commission_rules;
    v_digest := wallet.checkpoint_digest(v_id, v_rule_count, v_rule_chain_hash);
    INSERT INTO wallet.checkpoints (id, entry_watermark, rule_count, rule_chain_hash, digest)
    OVERRIDING SYSTEM VALUE
    VALUES (v_id, v_watermark, v_rule_count, v_rule_chain_hash, v_digest);
    RETURN format('v1:%s:%s', v_id, encode(v_digest, 'hex'));
END
$$;

-- wallet.parse_checkpoint: the checkpoint id and digest of a 'v1:<id>:<hex>' string.
-- Raises: WI400 invalid_request (not such a string).
CREATE OR REPLACE FUNCTION wallet.parse_checkpoint(p_checkpoint text, OUT checkpoint_id bigint, OUT digest bytea)
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_parts text[] := regexp_match(p_checkpoint, '^v1:([0-9]{1,18}):([0-9a-f]{64})$');
BEGIN
    IF v_parts IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400',
            MESSAGE = 'a checkpoint digest looks like v1:<id>:<64 hex digits>, as wallet.ledger_checkpoint() returns it';
    END IF;
    checkpoint_id := v_parts[1]::bigint;
    digest := decode(v_parts[2], 'hex');
END
$$;

-- wallet.verify_checkpoint: is the ledger still an extension of the checkpoint whose
-- digest p_checkpoint an operator kept? Catches what a consistent rewrite (hashes
-- recomputed too) or a rollback can hide from verify_ledger:
--   checkpoint_missing      the checkpoint is not in the database: the ledger was truncated,
--                           restored or rolled back to before it
--   checkpoint_altered      its stored heads or digest are not what was kept
--   chain_rolled_back       a wallet it saw is gone, or its chain is shorter than it was
--   chain_rewritten         a wallet's link at the checkpoint's version is not the head it saw
--   rule_chain_rolled_back  fewer commission rules than it saw
--   rule_chain_rewritten    the rule chain no longer passes through the head it saw
-- Together with an empty verify_ledger() (every link follows from its predecessor), the
-- whole history up to the checkpoint is as it was.
-- Raises: WI400 invalid_request (a malformed digest).
CREATE OR REPLACE FUNCTION wallet.verify_checkpoint(p_checkpoint text)
RETURNS TABLE (check_name text, detail text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_kept       record := wallet.parse_checkpoint(p_checkpoint);
    v_checkpoint wallet.checkpoints;
BEGIN
    SELECT * INTO v_checkpoint FROM wallet.checkpoints WHERE id = v_kept.checkpoint_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'checkpoint_missing',
            format('checkpoint %s is not in the database: the ledger was truncated or rolled back to before it',
                   v_kept.checkpoint_id);
        RETURN;
    END IF;
    IF v_checkpoint.digest <> v_kept.digest
       OR wallet.checkpoint_digest(v_checkpoint.id, v_checkpoint.rule_count, v_checkpoint.rule_chain_hash) <> v_kept.digest
    THEN
        RETURN QUERY SELECT 'checkpoint_altered',
            format('checkpoint %s no longer has the digest that was kept', v_checkpoint.id);
    END IF;

    RETURN QUERY
        SELECT CASE WHEN w.id IS NULL OR w.chain_version < h.chain_version THEN 'chain_rolled_back'
                    ELSE 'chain_rewritten' END,
               CASE WHEN w.id IS NULL THEN format('wallet %s of checkpoint %s no longer exists', h.wallet_id, h.checkpoint_id)
                    WHEN w.chain_version < h.chain_version
                    THEN format('wallet %s: chain at version %s, checkpoint %s saw %s',
                                h.wallet_id, w.chain_version, h.checkpoint_id, h.chain_version)
                    ELSE format('wallet %s: link %s is not the head checkpoint %s saw',
                                h.wallet_id, h.chain_version, h.checkpoint_id) END
        FROM wallet.checkpoint_heads AS h
        LEFT JOIN wallet.wallets AS w ON w.id = h.wallet_id
        WHERE h.checkpoint_id = v_checkpoint.id
          AND (w.id IS NULL
               OR w.chain_version < h.chain_version
               OR h.chain_hash IS DISTINCT FROM CASE
                      WHEN h.chain_version = 0
                          THEN wallet.chain_genesis(w.id, w.owner_id, w.currency, w.created_at)
                      ELSE coalesce(
                          (SELECT e.chain_hash FROM wallet.entries AS e
                           WHERE e.wallet_id = h.wallet_id AND e.kind = ANY (wallet.transaction_kinds())
                             AND e.created_at = h.head_at AND e.chain_version = h.chain_version),
                          (SELECT s.chain_hash FROM wallet.status_changes AS s
                           WHERE s.wallet_id = h.wallet_id AND s.chain_version = h.chain_version)) END);

    IF (SELECT count(*) FROM wallet.commission_rules) < v_checkpoint.rule_count THEN
        RETURN QUERY SELECT 'rule_chain_rolled_back',
            format('%s commission rules, checkpoint %s saw %s', (SELECT count(*) FROM wallet.commission_rules),
                   v_checkpoint.id, v_checkpoint.rule_count);
    ELSIF v_checkpoint.rule_count > 0 AND v_checkpoint.rule_chain_hash IS DISTINCT FROM (
        SELECT chain_hash FROM wallet.commission_rules ORDER BY id OFFSET v_checkpoint.rule_count - 1 LIMIT 1)
    THEN
        RETURN QUERY SELECT 'rule_chain_rewritten',
            format('commission rule %s is not the head checkpoint %s saw', v_checkpoint.rule_count, v_checkpoint.id);
    END IF;
END
$$;

-- wallet.verify_ledger_since: what verify_ledger checks, for what changed after the newest
-- checkpoint taken at or before p_since, trusting what that checkpoint saw. Reads the links
-- and entries of the wallets that changed since (through their index), the transactions
-- those links name, the entries above the checkpoint's watermark and the rules after it:
-- its cost follows the activity since the checkpoint, not the size of the ledger.
-- Checks (names as in verify_ledger): the checkpoint's own digest (checkpoint_altered),
-- chain_link_mismatch, chain_version_gap and chain_head_mismatch from each checkpoint head
-- on, entry_chain_broken and balance_differs_from_entries from the head's balance on,
-- transaction_unbalanced, transaction_entries and revenue_differs_from_fee of the
-- transactions those links name, transaction_unchained above the watermark,
-- pending_differs_from_scheduled, held_differs_from_holds and negative_balance everywhere
-- (the partial index on scheduled deposits and the active holds keep that small),
-- rule_chain_broken after the checkpoint's rules.
-- An entry written by hand below the watermark, any edit of what the checkpoint saw, and
-- hold_captures_differ (it sums every capture of a hold, which no index of transactions
-- finds) are for a full verify_ledger (and verify_checkpoint) to find.
-- Raises: WI400 invalid_request (no checkpoint at or before p_since).
CREATE OR REPLACE FUNCTION wallet.verify_ledger_since(p_since timestamptz)
RETURNS TABLE (check_name text, detail text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_checkpoint wallet.checkpoints;
BEGIN
    SELECT * INTO v_checkpoint FROM wallet.checkpoints
    WHERE created_at <= p_since ORDER BY created_at DESC, id DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400',
            MESSAGE = format('no checkpoint at or before %s: run wallet.ledger_checkpoint() (wallet verify --checkpoint) first',
                             p_since);
    END IF;
    IF wallet.checkpoint_digest(v_checkpoint.id, v_checkpoint.rule_count, v_checkpoint.rule_chain_hash)
       <> v_checkpoint.digest
    THEN
        RETURN QUERY SELECT 'checkpoint_altered',
            format('checkpoint %s no longer matches its own digest', v_checkpoint.id);
    END IF;

    RETURN QUERY
    WITH changed AS (
        -- Each wallet that changed since the checkpoint, with the head the checkpoint saw
        -- (its genesis for a wallet opened after it).
        SELECT w.id, w.chain_version, w.chain_hash, w.updated_at, w.balance,
               coalesce(h.chain_version, 0) AS from_version,
               coalesce(h.chain_hash, wallet.chain_genesis(w.id, w.owner_id, w.currency, w.created_at)) AS from_hash,
               coalesce(h.head_at, '-infinity') AS from_at,
               coalesce(h.balance, 0) AS from_balance
        FROM wallet.wallets AS w
        LEFT JOIN wallet.checkpoint_heads AS h ON h.checkpoint_id = v_checkpoint.id AND h.wallet_id = w.id
        WHERE h.wallet_id IS NULL OR w.chain_version <> h.chain_version OR w.chain_hash <> h.chain_hash
    ),
    new_entries AS (
        SELECT e.*, c.from_version, c.from_balance
        FROM changed AS c
        JOIN wallet.entries AS e
          ON e.wallet_id = c.id AND e.kind = ANY (wallet.transaction_kinds()) AND e.created_at >= c.from_at
        WHERE e.chain_version > c.from_version
    ),
    links AS (
        SELECT e.wallet_id, e.chain_version, e.chain_hash, 'posted' AS event, e.balance_after AS after,
               e.transaction_id, e.created_at
        FROM new_entries AS e
        UNION ALL
        SELECT s.wallet_id, s.chain_version, s.chain_hash, s.event, s.pending_after, s.transaction_id, s.created_at
        FROM changed AS c
        JOIN wallet.status_changes AS s ON s.wallet_id = c.id AND s.chain_version > c.from_version
    ),
    chained AS (
        SELECT l.*, c.from_version, c.from_hash,
               lag(l.chain_hash) OVER by_version AS previous_hash,
               row_number() OVER by_version AS position,
               row_number() OVER (PARTITION BY l.wallet_id ORDER BY l.chain_version DESC) = 1 AS newest
        FROM links AS l
        JOIN changed AS c ON c.id = l.wallet_id
        WINDOW by_version AS (PARTITION BY l.wallet_id ORDER BY l.chain_version)
    ),
    touched AS (
        SELECT DISTINCT transaction_id AS id FROM links WHERE transaction_id IS NOT NULL
    ),
    legs AS (
        SELECT e.transaction_id,
               string_agg(coalesce(e.wallet_id::text, e.account) || ':' || e.net_amount, ','
                          ORDER BY e.wallet_id NULLS LAST, e.account) AS legs,
               sum(e.net_amount) AS total,
               coalesce(sum(e.net_amount) FILTER (WHERE e.account = 'revenue'), 0) AS revenue,
               count(*) AS entry_count
        FROM touched
        JOIN wallet.entries AS e ON e.transaction_id = touched.id
        GROUP BY e.transaction_id
    )
    SELECT 'chain_link_mismatch',
           format('wallet %s link %s (%s%s) does not hash to its stored value',
                  c.wallet_id, c.chain_version, c.event, ' of transaction ' || c.transaction_id)
    FROM chained AS c
    LEFT JOIN wallet.transactions AS t ON t.id = c.transaction_id
    LEFT JOIN legs ON legs.transaction_id = c.transaction_id AND c.event = 'posted'
    WHERE c.chain_hash IS DISTINCT FROM wallet.chain_link(
              coalesce(c.previous_hash, c.from_hash),
              CASE WHEN c.transaction_id IS NULL THEN sha256(convert_to(c.event, 'UTF8'))
                   WHEN c.event = 'posted' THEN wallet.transaction_digest(t, legs.legs)
                   ELSE wallet.transaction_digest(t, wallet.expected_legs(t.kind, t.wallet_id, t.from_wallet_id,
                                                                          t.to_wallet_id, t.amount, t.fee)) END,
              c.chain_version, c.after, c.event, c.created_at)

    UNION ALL
    SELECT 'chain_version_gap',
           format('wallet %s: link %s is number %s of its chain', wallet_id, chain_version, from_version + position)
    FROM chained
    WHERE chain_version <> from_version + position

    UNION ALL
    SELECT 'chain_head_mismatch',
           format('wallet %s: head at version %s, newest link %s', c.id, c.chain_version,
                  coalesce(l.chain_version, c.from_version))
    FROM changed AS c
    LEFT JOIN chained AS l ON l.wallet_id = c.id AND l.newest
    WHERE c.chain_version <> coalesce(l.chain_version, c.from_version)
       OR c.chain_hash <> coalesce(l.chain_hash, c.from_hash)
       OR c.updated_at <> coalesce(l.created_at, c.updated_at)

    UNION ALL
    SELECT 'entry_chain_broken',
           format('wallet %s entry %s: balance_before %s, previous balance_after %s',
                  wallet_id, id, balance_before, previous_balance_after)
    FROM (SELECT wallet_id, id, balance_before,
                 coalesce(lag(balance_after) OVER (PARTITION BY wallet_id ORDER BY id), from_balance)
                     AS previous_balance_after
          FROM new_entries) AS chain
    WHERE balance_before <> previous_balance_after

    UNION ALL
    SELECT 'balance_differs_from_entries',
           format('wallet %s: balance %s, checkpoint balance %s and entries since sum to %s',
                  c.id, c.balance, c.from_balance, coalesce(sums.total, 0))
    FROM changed AS c
    LEFT JOIN (SELECT wallet_id, sum(net_amount) AS total FROM new_entries GROUP BY wallet_id) AS sums
           ON sums.wallet_id = c.id
    WHERE c.balance <> c.from_balance + coalesce(sums.total, 0)

    UNION ALL
    SELECT 'transaction_unbalanced', format('transaction %s: entries sum to %s', transaction_id, total)
    FROM legs
    WHERE total <> 0

    UNION ALL
    SELECT 'transaction_entries', format('transaction %s is %s with %s entries', t.id, t.status,
                                         coalesce(legs.entry_count, 0))
    FROM touched
    JOIN wallet.transactions AS t ON t.id = touched.id
    LEFT JOIN legs ON legs.transaction_id = t.id
    WHERE (t.status = 'posted') <> (coalesce(legs.entry_count, 0) > 0)

    UNION ALL
    SELECT 'revenue_differs_from_fee', format('transaction %s: fee %s, revenue entries %s', t.id, t.fee, legs.revenue)
    FROM legs
    JOIN wallet.transactions AS t ON t.id = legs.transaction_id
    WHERE t.status = 'posted' AND t.fee <> legs.revenue

    UNION ALL
    SELECT 'transaction_unchained', format('transaction %s has entries but no wallet chain covers it', e.transaction_id)
    FROM wallet.entries AS e
    WHERE e.id > v_checkpoint.entry_watermark
    GROUP BY e.transaction_id
    HAVING bool_and(e.wallet_id IS NULL)


    UNION ALL
    SELECT * FROM wallet.verify_pending_signs_and_rules(v_checkpoint.rule_count);
END
$$;

-- wallet_app (the API's and the worker's role) may run none of these: an unbounded read
-- of the whole ledger is not a request. The API's /v1/ledger/verify sets wallet_auditor.
REVOKE ALL ON FUNCTION wallet.verify_ledger() FROM PUBLIC, wallet_app;
REVOKE ALL ON FUNCTION wallet.verify_pending_signs_and_rules(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.checkpoint_digest(bigint, bigint, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.ledger_checkpoint() FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.parse_checkpoint(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.verify_checkpoint(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.verify_ledger_since(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.verify_ledger() TO wallet_auditor;
GRANT EXECUTE ON FUNCTION wallet.ledger_checkpoint() TO wallet_auditor;
GRANT EXECUTE ON FUNCTION wallet.verify_checkpoint(text) TO wallet_auditor;
GRANT EXECUTE ON FUNCTION wallet.verify_ledger_since(timestamptz) TO wallet_auditor;

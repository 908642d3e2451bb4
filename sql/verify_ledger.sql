-- wallet.verify_ledger: every way the ledger could be inconsistent, checked from the
-- facts. Returns one row per violation and none when the ledger is sound. Reads every
-- entry: an audit, not a request-path call. Locks nothing.
--
--   transaction_unbalanced     a transaction's entries do not sum to zero
--   transaction_entries        a posted transaction without entries, or an unposted one with some
--   revenue_differs_from_fee   a transaction's revenue leg is not its fee
--   balance_differs_from_entries  a wallet's balance is not the sum of its entries
--   pending_differs_from_scheduled  a wallet's pending is not the sum of its scheduled deposits
--   negative_balance           a wallet below zero
--   entry_chain_broken         an entry's balance_before is not the previous entry's balance_after
CREATE OR REPLACE FUNCTION wallet.verify_ledger()
RETURNS TABLE (check_name text, detail text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'transaction_unbalanced', format('transaction %s: entries sum to %s', transaction_id, sum(net_amount))
    FROM wallet.entries
    GROUP BY transaction_id
    HAVING sum(net_amount) <> 0

    UNION ALL
    SELECT 'transaction_entries', format('transaction %s is %s with %s entries', t.id, t.status, count(e.id))
    FROM wallet.transactions AS t
    LEFT JOIN wallet.entries AS e ON e.transaction_id = t.id
    GROUP BY t.id, t.status
    HAVING (t.status = 'posted') <> (count(e.id) > 0)

    UNION ALL
    SELECT 'revenue_differs_from_fee',
           format('transaction %s: fee %s, revenue entries %s', t.id, t.fee, coalesce(revenue.total, 0))
    FROM wallet.transactions AS t
    LEFT JOIN (SELECT transaction_id, sum(net_amount) AS total
               FROM wallet.entries WHERE account = 'revenue' GROUP BY transaction_id) AS revenue
           ON revenue.transaction_id = t.id
    WHERE t.status = 'posted' AND t.fee <> coalesce(revenue.total, 0)

    UNION ALL
    SELECT 'balance_differs_from_entries',
           format('wallet %s: balance %s, entries sum to %s', w.id, w.balance, coalesce(posted.total, 0))
    FROM wallet.wallets AS w
    LEFT JOIN (SELECT wallet_id, sum(net_amount) AS total
               FROM wallet.entries WHERE wallet_id IS NOT NULL GROUP BY wallet_id) AS posted
           ON posted.wallet_id = w.id
    WHERE w.balance <> coalesce(posted.total, 0)

    UNION ALL
    SELECT 'pending_differs_from_scheduled',
           format('wallet %s: pending %s, scheduled deposits sum to %s', w.id, w.pending, coalesce(scheduled.total, 0))
    FROM wallet.wallets AS w
    LEFT JOIN (SELECT wallet_id, sum(amount - fee) AS total
               FROM wallet.transactions WHERE status = 'scheduled' GROUP BY wallet_id) AS scheduled
           ON scheduled.wallet_id = w.id
    WHERE w.pending <> coalesce(scheduled.total, 0)

    UNION ALL
    SELECT 'negative_balance', format('wallet %s: balance %s, pending %s', id, balance, pending)
    FROM wallet.wallets
    WHERE balance < 0 OR pending < 0

    UNION ALL
    SELECT 'entry_chain_broken',
           format('wallet %s entry %s: balance_before %s, previous balance_after %s',
                  wallet_id, id, balance_before, previous_balance_after)
    FROM (SELECT wallet_id, id, balance_before,
                 coalesce(lag(balance_after) OVER (PARTITION BY wallet_id ORDER BY id), 0) AS previous_balance_after
          FROM wallet.entries
          WHERE wallet_id IS NOT NULL) AS chain
    WHERE balance_before <> previous_balance_after
$$;

REVOKE ALL ON FUNCTION wallet.verify_ledger() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.verify_ledger() TO wallet_app, wallet_auditor;

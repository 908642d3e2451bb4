-- History of unposted deposits by kind, with their time inside the index: a page of one
-- kind that the wallet has none of reads one empty range instead of every scheduled,
-- canceled and failed deposit of the wallet, and since/until are checked on the index
-- row instead of on the table (see sql/wallet_history.sql). Only deposits that are not
-- posted are in it, so no movement pays for it. It replaces (wallet_id, history_seq).
-- depends: 0006_chain_and_history

CREATE INDEX transactions_unposted_history_by_kind_idx
    ON wallet.transactions (wallet_id, kind, history_seq DESC, created_at)
    WHERE status <> 'posted';
DROP INDEX wallet.transactions_unposted_history_idx;
ALTER INDEX wallet.transactions_unposted_history_by_kind_idx RENAME TO transactions_unposted_history_idx;

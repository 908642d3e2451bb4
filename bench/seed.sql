-- The benchmark's data, loaded once into a freshly migrated database.
-- Balances come from real wallet.deposit calls, so wallet.verify_ledger() holds.

-- The ceiling: a plain table of 10,000 counters, no triggers, no foreign keys.
CREATE TABLE bench_counters (id integer PRIMARY KEY, value bigint NOT NULL);
INSERT INTO bench_counters (id, value) SELECT n, 0 FROM generate_series(1, 10000) AS n;

-- pgbench draws a number and looks the wallet up here. n = 1 is the hot wallet.
CREATE TABLE bench_ids (n integer PRIMARY KEY, wallet_id uuid NOT NULL);
INSERT INTO bench_ids (n, wallet_id)
SELECT n, opened.id
FROM generate_series(1, 10000) AS n,
     LATERAL wallet.open_wallet('bench', NULL, NULL, 'bench-owner-' || n) AS opened;

-- 10^12 each: enough for ten million withdrawals of 100,000 plus fee from the hot wallet.
-- No deposit rule exists yet, so funding is free of fees.
SELECT count(funded.id)
FROM bench_ids, LATERAL wallet.deposit('bench', NULL, NULL, NULL, wallet_id, 1000000000000) AS funded;

-- 0.5% + 100, at least 100, at most 50,000: on 100,000 the fee is 600.
SELECT wallet.set_commission_rule('bench', 'transfer', NULL, 50, 100, 100, 50000);
SELECT wallet.set_commission_rule('bench', 'withdrawal', NULL, 50, 100, 100, 50000);

-- (d) Every client withdraws 100,000 (fee 600) from the one hot wallet, with a fresh
-- idempotency key. The seed's 10^12 outlasts any run.
SELECT wallet.withdraw('bench', gen_random_uuid()::text, 'fp', NULL,
                       (SELECT wallet_id FROM bench_ids WHERE n = 1), 100000);

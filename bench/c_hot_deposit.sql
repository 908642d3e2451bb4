-- (c) Every client deposits 100,000 into the one hot wallet, with a fresh idempotency key.
SELECT wallet.deposit('bench', gen_random_uuid()::text, 'fp', NULL,
                      (SELECT wallet_id FROM bench_ids WHERE n = 1), 100000);

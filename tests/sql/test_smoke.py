def test_a_deposit_reaches_the_balance(db):
    wallet_id = db.execute("SELECT id FROM wallet.open_wallet('svc', NULL, NULL, 'merchant-1')").fetchone()[0]
    db.execute("SELECT wallet.deposit('svc', NULL, NULL, NULL, %s, 1000)", (wallet_id,))
    balance = db.execute("SELECT balance FROM wallet.get_wallet(NULL, %s)", (wallet_id,)).fetchone()[0]
    assert balance == 1000


async def test_the_pool_reaches_the_same_database(pool, db):
    db.execute("SELECT wallet.open_wallet('svc', NULL, NULL, 'merchant-1')")
    assert await pool.fetchval("SELECT count(*) FROM wallet.wallets") == 1

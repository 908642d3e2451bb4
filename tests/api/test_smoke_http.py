def test_a_deposit_over_http_reaches_the_balance(client):
    wallet = client.post("/v1/wallets", json={"owner_id": "smoke-owner"}).json()
    deposit = client.post(f"/v1/wallets/{wallet['id']}/deposits", json={"amount": 500})
    assert deposit.status_code == 201
    assert client.get(f"/v1/wallets/{wallet['id']}").json()["balance"] == 500

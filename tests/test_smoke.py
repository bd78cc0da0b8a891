def test_health(client, health_headers):
    assert client.get("/api/health").json["status"] == "ok"
    r = client.get("/api/health/db/test", headers=health_headers)
    assert r.status_code == 200, r.json
    r = client.get("/api/health/db", headers=health_headers)
    print(r.json)
    assert r.json["status"] == "healthy"

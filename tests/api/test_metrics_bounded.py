"""``/metrics`` stays bounded whatever clients send: made-up methods and paths share labels."""

from __future__ import annotations

import uuid


def test_made_up_methods_and_paths_do_not_grow_the_metrics(api) -> None:
    client = api()
    for i in range(50):
        client.request(f"BREW{i}", f"/v1/jobs/{uuid.uuid4().hex}")
        client.request("GET", f"/no/such/path/{uuid.uuid4().hex}")
    before = len(client.get("/metrics").text)
    for i in range(500):
        client.request(f"X-{uuid.uuid4().hex[:8]}", f"/{uuid.uuid4().hex}")
        client.request("GET", f"/v1/unknown/{i}")
    text = client.get("/metrics").text
    assert len(text) < before + 2000, "the label set grew with the requests"
    assert 'method="other"' in text and "BREW" not in text and 'route="unmatched"' in text

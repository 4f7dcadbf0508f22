"""The first thing a new user does: start the demo app and load the page."""

from __future__ import annotations

from support import free_port, get


def test_demo_app_serves_master_and_worker_pids(masters) -> None:
    port = free_port()
    master = masters("--bind", f"127.0.0.1:{port}", "--workers", "2")
    response = get(f"http://127.0.0.1:{port}/")
    assert response.status_code == 200
    assert f"<td>{master.pid}</td>" in response.text
    assert any(f"<td>{w}</td>" in response.text for w in master.workers())
    assert "generation" in response.text

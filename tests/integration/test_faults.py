"""Faults under load, on a real `bentoml serve` with the runner in a service of its own
(`placement: embedder`): the inner service's worker is killed while clients keep sending
requests. The service must come back by itself, `/readyz` must report the
outage while it lasts, and the number of failed requests must stay bounded."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.servers import Load, running_server, service_config

pytestmark = pytest.mark.slow
CLIENTS = 4


def test_killed_inner_worker_comes_back_with_bounded_failures(trained, tmp_path):
    h, games = trained.histories, trained.artifacts.vocab.game_ids
    user = trained.split.test.users[0]
    body = {"user_id": "p", "time_played": {games[g]: 60.0 for g in h.game_positions[h.span(user)]}}
    env = {"GAMEREC_MODEL_TAG": trained.tag, **service_config(tmp_path, placement="embedder")}
    with (
        running_server(["service:GameRec"], env=env) as server,
        Load(server.url, body, CLIENTS, probe_readiness=True) as load,
    ):
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(server.worker_pid("Embedder"), signal.SIGKILL)
        deadline = killed_at + 120
        while time.monotonic() < deadline:  # wait for the outage to be seen and to end
            after = [s for t, s in load.readiness if t > killed_at]
            if any(s != 200 for s in after) and after[-1] == 200:
                break
            time.sleep(0.2)
        recovered_at = time.monotonic()
        time.sleep(3)  # traffic after the recovery

    after = [s for t, s in load.readiness if t > killed_at]
    assert 503 in after, f"/readyz never reported the outage: {after}"
    assert after[-1] == 200, f"/readyz did not come back: {after[-20:]}"
    failed = [(a.ended - killed_at, a.status, a.error) for a in load.answers if a.status != 200]
    served_after = [a.status for a in load.answers if a.ended > recovered_at]
    outage = max(t for t, s in load.readiness if s != 200) - killed_at
    print(
        f"\nEmbedder killed: outage seen by /readyz for {outage:.1f} s; {len(load.answers)} "
        f"requests, {len(failed)} failed, {len(served_after)} after recovery"
    )
    # Requests in flight or sent during the outage wait for the new worker (retried by the
    # entry service): at most one in-flight request per client may fail.
    assert len(failed) <= CLIENTS, failed
    assert served_after and all(s == 200 for s in served_after)

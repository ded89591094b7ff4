"""The per-credential limiter's shared pause (a 429's ``Retry-After``) on an endpoint without a rate.

Two limiters on one state folder stand for two processes sharing a credential: each reads the state file
itself. Only whether a wait happens is asserted, never how long the code took."""

from __future__ import annotations

import time

from connectors.engine.ratelimit import PAUSE_CHECK_SECONDS, RateLimiter


def test_a_pause_set_in_this_process_holds_back_the_next_request_at_once(tmp_path):
    limiter = RateLimiter(tmp_path, "vendor-abc", 0.0)
    assert limiter.acquire() == 0.0
    limiter.pause_until(time.time() + 0.3)
    waited = limiter.acquire()
    assert 0.0 < waited <= 0.3


def test_another_process_sees_the_pause_within_the_check_interval(tmp_path):
    here, there = RateLimiter(tmp_path, "vendor-abc", 0.0), RateLimiter(tmp_path, "vendor-abc", 0.0)
    assert there.acquire() == 0.0  # read the state once: no pause yet
    here.pause_until(time.time() + 0.5)
    time.sleep(PAUSE_CHECK_SECONDS)
    waited = there.acquire()
    assert 0.0 < waited <= 0.5
    assert there.acquire() == 0.0  # the pause is over


def test_a_limiter_of_another_credential_is_not_paused(tmp_path):
    RateLimiter(tmp_path, "vendor-abc", 0.0).pause_until(time.time() + 5)
    assert RateLimiter(tmp_path, "vendor-def", 0.0).acquire() == 0.0


def test_a_paced_endpoint_still_spaces_requests_across_limiters(tmp_path):
    first, second = RateLimiter(tmp_path, "vendor-abc", 0.2), RateLimiter(tmp_path, "vendor-abc", 0.2)
    first.acquire()
    assert second.acquire() > 0.0  # the next slot was taken by the other limiter

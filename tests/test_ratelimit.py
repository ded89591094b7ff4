"""The per-credential limiter's shared pause (a 429's ``Retry-After``) on an endpoint without a rate.

Two limiters on one state folder stand for two processes sharing a credential: each reads the state file
itself. Only whether a wait is due is asserted, never how long the code took: each ``acquire`` gets an
abort event that is already set, so it returns the wait it would sleep without sleeping it, and long
pauses keep a slow machine from running past them."""

from __future__ import annotations

import threading
import time

from connectors.engine.ratelimit import PAUSE_CHECK_SECONDS, RateLimiter

PAUSE = 30.0


def _no_sleep() -> threading.Event:
    stop = threading.Event()
    stop.set()
    return stop


def test_a_pause_set_in_this_process_holds_back_the_next_request_at_once(tmp_path):
    limiter = RateLimiter(tmp_path, "vendor-abc", 0.0)
    assert limiter.acquire(_no_sleep()) == 0.0
    limiter.pause_until(time.time() + PAUSE)
    assert 0.0 < limiter.acquire(_no_sleep()) <= PAUSE


def test_another_process_sees_the_pause_within_the_check_interval(tmp_path):
    here, there = RateLimiter(tmp_path, "vendor-abc", 0.0), RateLimiter(tmp_path, "vendor-abc", 0.0)
    assert there.acquire(_no_sleep()) == 0.0  # read the state once: no pause yet
    here.pause_until(time.time() + PAUSE)
    time.sleep(PAUSE_CHECK_SECONDS)
    assert 0.0 < there.acquire(_no_sleep()) <= PAUSE


def test_a_pause_in_the_past_holds_nothing_back(tmp_path):
    here, there = RateLimiter(tmp_path, "vendor-abc", 0.0), RateLimiter(tmp_path, "vendor-abc", 0.0)
    here.pause_until(time.time() - 1)
    assert there.acquire(_no_sleep()) == 0.0


def test_a_limiter_of_another_credential_is_not_paused(tmp_path):
    RateLimiter(tmp_path, "vendor-abc", 0.0).pause_until(time.time() + PAUSE)
    assert RateLimiter(tmp_path, "vendor-def", 0.0).acquire(_no_sleep()) == 0.0


def test_a_paced_endpoint_still_spaces_requests_across_limiters(tmp_path):
    first, second = RateLimiter(tmp_path, "vendor-abc", PAUSE), RateLimiter(tmp_path, "vendor-abc", PAUSE)
    assert first.acquire(_no_sleep()) == 0.0
    assert second.acquire(_no_sleep()) > 0.0  # the next slot was taken by the other limiter

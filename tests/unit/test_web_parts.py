"""The web app's pieces that need no server: secret hashing, sessions, filter parsing, SVG charts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from monitor.store.records import RateBucket
from monitor.web.auth import Authenticator, Credential, check_hash_format, hash_secret, verify_secret
from monitor.web.charts import ThresholdMark, histogram_chart, volume_chart
from monitor.web.filters import FilterError, parse_datetime, parse_queue_filters

CHEAP = 2**10  # the production cost is 2**14; the format and the check are the same


def test_a_hash_checks_its_secret_and_nothing_else():
    stored = hash_secret("correct horse", n=CHEAP)
    assert stored.startswith(f"scrypt${CHEAP}$8$1$")
    assert verify_secret("correct horse", stored)
    assert not verify_secret("correct hors", stored)
    assert hash_secret("correct horse", n=CHEAP) != stored  # salted
    assert not verify_secret("x", "plaintext")
    assert not verify_secret("x", "scrypt$abc$8$1$AAAA$AAAA")


@pytest.mark.parametrize("stored, message", [
    ("plaintext-password", "expected 'scrypt"),
    ("scrypt$1000$8$1$AAAA$AAAA", "power of two"),
    ("scrypt$x$8$1$AAAA$AAAA", "malformed"),
])
def test_a_config_hash_of_the_wrong_shape_is_named(stored, message):
    with pytest.raises(ValueError, match=message):
        check_hash_format(stored)


def authenticator(accounts=("lena",), tokens=("bot",), lifetime=3600.0) -> Authenticator:
    return Authenticator(
        [Credential(name, "labeller", hash_secret(f"{name}-password", n=CHEAP)) for name in accounts],
        [Credential(name, "viewer", hash_secret(f"{name}-token", n=CHEAP)) for name in tokens],
        b"k" * 32,
        lifetime,
    )


def test_sessions_are_signed_expire_and_follow_the_config():
    auth = authenticator()
    cookie = auth.issue_session("lena", now=1000.0)
    principal = auth.principal_for_session(cookie, now=1500.0)
    assert principal.name == "lena" and principal.role == "labeller" and principal.csrf
    assert auth.principal_for_session(cookie, now=1000.0 + 3600.0) is None  # expired
    body, signature = cookie.rsplit(".", 1)
    assert auth.principal_for_session(body + "." + signature[::-1], now=1500.0) is None
    assert auth.principal_for_session("garbage", now=1500.0) is None
    # Another key, or the account gone from the config: the same cookie no longer counts.
    other = Authenticator(auth.accounts.values(), auth.tokens, b"z" * 32, 3600.0)
    assert other.principal_for_session(cookie, now=1500.0) is None
    removed = authenticator(accounts=())
    removed._key = auth._key
    assert removed.principal_for_session(cookie, now=1500.0) is None


def test_logins_and_tokens():
    auth = authenticator()
    assert auth.login("lena", "lena-password").name == "lena"
    assert auth.login("lena", "wrong") is None and auth.login("nobody", "lena-password") is None
    assert auth.principal_for_token("bot-token").role == "viewer"
    assert auth.principal_for_token("bot-token").name == "bot"  # second time from the cache
    assert auth.principal_for_token("other") is None and auth.principal_for_token("") is None
    auth.tokens = []  # a token removed from the config stops working even if it was cached
    assert auth.principal_for_token("bot-token") is None


def test_times_parse_as_utc_and_bad_ones_name_the_parameter():
    assert parse_datetime("since", "2026-11-27T14:00") == datetime(2026, 11, 27, 14, tzinfo=timezone.utc)
    assert parse_datetime("since", "2026-11-27T14:00:00Z") == datetime(2026, 11, 27, 14, tzinfo=timezone.utc)
    # A '+' left unescaped in a URL arrives as a space.
    assert parse_datetime("until", "2026-11-27T15:00:00 01:00") == datetime(2026, 11, 27, 14, tzinfo=timezone.utc)
    with pytest.raises(FilterError, match="^since: 'soon' is not an ISO 8601"):
        parse_datetime("since", "soon")


def test_queue_filters_treat_empty_form_fields_as_absent():
    filters = parse_queue_filters({"since": "", "class": " ", "labelled": "ood", "sort": "SCORE_DESC"}, 48)
    assert filters.since is None and filters.predicted_class is None
    assert filters.labelled == "OOD" and filters.sort == "score_desc" and filters.per_page == 48
    assert filters.as_params(page=3) == {"labelled": "OOD", "sort": "score_desc", "page": "3", "per_page": "48"}


def test_charts_escape_text_and_say_when_there_is_nothing_to_draw():
    svg = histogram_chart([0.0, 1.0, 2.0], [3, 4], [ThresholdMark(1.5, "<script>x</script>", active=True)], "ANG")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count('class="threshold active"') == 1
    assert "No scores in this window" in histogram_chart([], [], [], "ANG")
    assert "No samples scored" in volume_chart([], "hour")


def test_the_share_line_breaks_where_no_sample_was_scored():
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    totals = [(10, 1), (10, 2), (0, 0), (10, 5), (10, 1)]
    buckets = [RateBucket(start + timedelta(hours=i), total, flagged) for i, (total, flagged) in enumerate(totals)]
    svg = volume_chart(buckets, "hour")
    assert svg.count("<polyline") == 2
    assert svg.count('class="bar flagged"') == 5


def test_hash_password_prints_a_config_entry_that_logs_in(monkeypatch, capsys):
    import io

    from monitor.cli import main
    from monitor.web.app import parse_credentials

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-password\n"))
    assert main(["web", "hash-password", "--name", "alice", "--role", "admin", "--stdin"]) == 0
    entry = capsys.readouterr().out.strip()
    [credential] = parse_credentials([entry], "accounts")
    assert (credential.name, credential.role) == ("alice", "admin")
    assert verify_secret("s3cret-password", credential.secret_hash)
    assert "s3cret" not in entry


def test_hash_password_refuses_bad_input_with_the_argument_named(monkeypatch, capsys):
    import io

    from monitor.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("long-enough-password\n"))
    assert main(["web", "hash-password", "--name", "bob", "--role", "boss", "--stdin"]) == 2
    assert "--role: 'boss' is not one of viewer, labeller, admin" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["web", "hash-password", "--name", "bob", "--stdin"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err


def _npy(array) -> bytes:
    import io

    import numpy as np

    out = io.BytesIO()
    np.save(out, array, allow_pickle=True)
    return out.getvalue()


@pytest.mark.parametrize("shape, dtype, mode", [
    ((28, 28), "float32", "L"), ((1, 28, 28), "float64", "L"), ((1, 3, 28, 28), "float32", "RGB"),
    ((28, 28, 3), "uint8", "RGB"), ((28, 28, 4), "uint8", "RGBA"), ((28, 28, 1), "uint8", "L"),
])
def test_arrays_are_drawn_as_png_for_the_pages(shape, dtype, mode):
    import io

    import numpy as np
    from PIL import Image

    from monitor.web.images import array_to_png

    array = (np.linspace(0, 1, int(np.prod(shape))).reshape(shape) * (255 if dtype == "uint8" else 1)).astype(dtype)
    picture = Image.open(io.BytesIO(array_to_png(_npy(array), max_pixels=10_000)))
    assert (picture.format, picture.size, picture.mode) == ("PNG", (28, 28), mode)


def test_arrays_that_are_not_pictures_are_refused_with_the_reason():
    import numpy as np

    from monitor.web.images import NotDisplayable, array_to_png

    with pytest.raises(NotDisplayable, match="cannot be read"):
        array_to_png(_npy(np.array([{"a": 1}], dtype=object)), 10_000)  # pickled objects are never loaded
    with pytest.raises(NotDisplayable, match="not a picture"):
        array_to_png(_npy(np.zeros((2, 3, 4, 5), dtype=np.uint8)), 10_000)
    with pytest.raises(NotDisplayable, match="over the limit"):
        array_to_png(_npy(np.zeros((200, 200), dtype=np.uint8)), 10_000)
    with pytest.raises(NotDisplayable, match="dtype int64"):
        array_to_png(_npy(np.zeros((8, 8), dtype=np.int64)), 10_000)
    with pytest.raises(NotDisplayable, match="cannot be read"):
        array_to_png(b"\x93NUMPY garbage", 10_000)


def test_failed_attempts_are_throttled_per_address_for_the_window():
    from monitor.web.auth import FailureLimiter

    limiter = FailureLimiter(max_failures=3, window_s=300.0)
    for second in (0.0, 1.0, 2.0):
        assert limiter.retry_after("10.0.0.1", now=second) == 0.0
        limiter.failed("10.0.0.1", now=second)
    assert limiter.retry_after("10.0.0.1", now=3.0) == pytest.approx(297.0)
    assert limiter.retry_after("10.0.0.2", now=3.0) == 0.0  # other addresses are not affected
    assert limiter.retry_after("10.0.0.1", now=300.5) == 0.0  # the oldest failure left the window


def test_a_name_given_twice_is_refused_even_with_surrounding_spaces():
    from monitor.errors import ConfigError
    from monitor.web.app import parse_credentials

    with pytest.raises(ConfigError, match="'bob' appears twice"):
        stored = hash_secret("secret", n=CHEAP)
        parse_credentials(["bob:viewer:" + stored, " bob:admin:" + stored], "[web] accounts")

"""Review round 9: store URLs and arguments a new user gets wrong, and passwords in messages."""

from __future__ import annotations

import warnings

import pytest

from shekel import BudgetConfigError, StoreError, budget

pytest.importorskip("redis")


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_password_with_a_space_never_shows_in_a_store_error() -> None:
    """redis-py accepts ``redis://:my secret@host`` (the password 'my secret', unencoded), and connects with
    it. ``shared._USERINFO`` matches ``[^/\\s]*@``, so userinfo holding a space is not hidden: the
    StoreError, the on_store_error='open' warning, reports and ``to_dict()`` show
    'redis://:my secret@127.0.0.1:.../0'."""
    url = f"redis://:my secret@127.0.0.1:{_closed_port()}/0"
    b = budget(max_usd=1, name="pw", store=url)
    with pytest.raises(StoreError) as caught:
        _ = b.spent
    assert "secret" not in str(caught.value), str(caught.value)
    assert "secret" not in repr(b)
    with warnings.catch_warnings(record=True) as warned:  # 'open': figures and warnings show no password
        warnings.simplefilter("always")
        opened = budget(max_usd=1, name="pw", store=url, on_store_error="open")
        shown = str(opened.to_dict())
    assert "secret" not in shown and all("secret" not in str(w.message) for w in warned)


@pytest.mark.parametrize("query", ["ssl_cert_reqs=bogus", "protocol=9"], ids=["ssl_cert_reqs", "protocol"])
def test_a_bad_redis_url_option_is_a_config_error_at_budget_time(query: str) -> None:
    """Issue 9: bad URLs "raise BudgetConfigError at budget() time with a clear message". ``?db=abc`` and
    ``?socket_timeout=abc`` do; ``?ssl_cert_reqs=bogus`` and ``?protocol=9`` pass budget() and fail at the
    first call as a StoreError that says "Check that the store is reachable, or pass
    on_store_error='open'": advice that cannot help (and with 'open', every call goes ahead uncounted in
    the store, forever, with one warning)."""
    scheme = "rediss" if query.startswith("ssl") else "redis"
    url = f"{scheme}://127.0.0.1:{_closed_port()}/0?{query}"
    with pytest.raises(BudgetConfigError):
        b = budget(max_usd=1, name="bad-option", store=url)
        _ = b.spent  # observed: StoreError here instead


def test_the_repr_of_a_shared_budget_does_not_say_no_limit(tmp_path: object) -> None:
    """``repr(budget(max_usd=1, name=..., store=...))`` is "<Budget 'r' spent=$0 of no limit, calls=0>":
    the repr reads this process's share (its account has no limit: the store enforces it), and says the
    budget has no limit. The repr need not read the store, but it should not claim 'no limit' for a
    budget capped at $1 (shown in logs, debuggers, error reports)."""
    b = budget(max_usd=1, name="r", store=f"sqlite:///{tmp_path}/budgets.db")
    assert "no limit" not in repr(b), repr(b)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://127.0.0.1:6379/x", "database number"),
        ("redis://127.0.0.1:6379/tenants", "database number"),
    ],
)
def test_a_redis_url_whose_path_is_not_a_database_number_is_a_config_error(url: str, says: str) -> None:
    """redis-py ignores a path it cannot read as a number (database 0, silently): shekel says so at once."""
    with pytest.raises(BudgetConfigError, match=says):
        budget(max_usd=1, name="db", store=url)


def test_an_sqlite_url_naming_a_folder_is_a_config_error(tmp_path: object) -> None:
    with pytest.raises(BudgetConfigError, match="is a folder: name the database file in it"):
        budget(max_usd=1, name="dir", store=f"sqlite:///{tmp_path}")


def test_the_repr_of_a_shared_budget_names_its_limits_and_store(tmp_path: object) -> None:
    b = budget(max_usd=1, max_llm_calls=3, name="r", store=f"sqlite:///{tmp_path}/budgets.db")
    assert repr(b) == (
        f"<Budget 'r' shared in sqlite:///{tmp_path}/budgets.db, $1 and 3 calls; this process: spent=$0, calls=0>"
    )

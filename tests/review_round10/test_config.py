"""Review round 10: store URLs and store objects (display_url, redis:// database numbers)."""

from __future__ import annotations

import pytest

from shekel import BudgetConfigError, budget
from shekel.ledger.shared import display_url

pytest.importorskip("redis")


def test_a_redis_store_object_with_a_path_that_is_no_database_number_is_refused(redis_store_url: str) -> None:
    """CHANGELOG: "a redis:// path that is not a database number (redis-py silently used database 0) ...
    [is] a BudgetConfigError at budget() time". True for budget(store="redis://.../budgets"), but the
    documented store object, ``shekel.stores.RedisStore(url)``, skips the check: the budget lives in
    database 0 and errors and reports name ".../budgets"."""
    from shekel.stores import RedisStore

    url = redis_store_url.rsplit("/", 1)[0] + "/budgets"
    with pytest.raises(BudgetConfigError):
        budget(max_usd=1, name="db-path", store=url)  # passes: the URL form is checked
    with pytest.raises(BudgetConfigError):
        budget(max_usd=1, name="db-path", store=RedisStore(url))  # observed: accepted, database 0


def test_display_url_hides_a_password_holding_a_question_mark() -> None:
    """display_url's docstring: user information is hidden "whatever characters the password holds".
    The userinfo is looked for only before the first '?', so with '?' in the password (written unencoded,
    as the previous fix allows for spaces) the part before it is printed in every error and report; the
    BudgetConfigError redis-py's parse then raises quotes it again ("Port could not be cast to integer
    value as 'hunter'")."""
    url = "redis://admin:hunter?2@cache.internal:6379/0"
    assert "hunter" not in display_url(url)  # observed: 'redis://admin:hunter?***'
    with pytest.raises(BudgetConfigError) as raised:
        budget(max_usd=1, name="q", store=url)
    assert "hunter" not in str(raised.value)

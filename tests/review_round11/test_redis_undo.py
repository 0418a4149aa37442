"""Review round 11: UNDO of a Redis reserve whose answer was lost (changes 7fda5cb)."""

from __future__ import annotations

import pytest

from shekel import StoreError
from shekel.ledger.shared import Ask, SharedLimits, parse_window

redis = pytest.importorskip("redis")

USD = 10**9


def test_an_undo_whose_carrier_is_lost_is_sent_again(
    redis_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reserve runs and its answer is lost: UNDO(1) is queued, to go with the next command. The next
    reserve's write fails (the connection is reset as it writes: nothing reached the server): UNDO(1) went
    in that batch and is dropped with it ("settles whose write or answer is lost are not sent again"),
    only UNDO(2) is queued. But an UNDO is safe to send twice (release, or a mark), and dropping it leaves
    the first reserve's hold in place for its whole lease, then charged for a call that was never sent:
    docs/shared-budgets.md says such a reservation "neither blocks room until its lease ends nor is
    charged"."""
    from shekel.stores import RedisStore

    store = RedisStore(redis_store_url)
    limits = SharedLimits("u", parse_window(None), 10 * USD, None, None)
    real_read, real_send = redis.Connection.read_response, redis.Connection.send_packed_command
    fail = {"read": 0, "send": 0}

    def read_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if fail["read"]:
            fail["read"] -= 1
            raise redis.ConnectionError("Connection closed by server.")
        return real_read(self, *args, **kwargs)

    def send_packed_command(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if fail["send"] and b"EVALSHA" in b"".join(args[0]):  # the batch, not the handshake of connect()
            fail["send"] -= 1
            raise redis.ConnectionError("Error 104 while writing to socket. Connection reset by peer.")
        return real_send(self, *args, **kwargs)

    monkeypatch.setattr(redis.Connection, "read_response", read_response)
    monkeypatch.setattr(redis.Connection, "send_packed_command", send_packed_command)
    assert store.read(limits).reserved == 0  # connected, scripts loaded
    fail["read"] = 1
    with pytest.raises(StoreError):  # it ran: $1 held; its answer lost
        store.reserve([limits], Ask("h:1:one", "p", USD, 0, 1, 1, 1, 0, 600.0))
    fail["send"] = 1
    with pytest.raises(StoreError):  # nothing of this write reached the server
        store.reserve([limits], Ask("h:1:two", "p", USD, 0, 1, 1, 1, 0, 600.0))
    figures = store.read(limits)
    store.close()
    assert figures.reserved == 0  # observed: $1, held until its lease ends, then charged

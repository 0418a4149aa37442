"""Review round 15a: ``_shares.LOCK`` is not reentrant, and the garbage collector settles dropped streams
wherever it runs, also inside that lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shekel.testing import FakeInferenceServer

pytest.importorskip("huggingface_hub")

#: A program using a shared budget (SQLite, the store up, on_store_error left "closed"), that drops streams
#: in reference cycles now and then (a request object pointing back at itself, an exception's traceback).
#: ``gc.set_threshold`` only chooses where the collector next runs, so that the run does not depend on luck:
#: after each dropped stream, the collector runs m allocations into the next call, for m = 0, 1, 2, ...
#: faulthandler ends a call stuck for 10 s with the stacks of the process.
PROGRAM = textwrap.dedent(
    """
    import faulthandler, gc, sys, warnings
    warnings.simplefilter("ignore")
    import huggingface_hub
    from huggingface_hub import InferenceClient
    from shekel import budget

    url, store = sys.argv[1], sys.argv[2]
    client = InferenceClient(base_url=url)
    MESSAGES = [{"role": "user", "content": "hi there"}]

    with budget(max_usd=100, name="svc", store=store, price_per_1k_tokens={"input": 1.0, "output": 2.0}):
        for _ in range(3):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
        for m in range(0, 400):
            gc.set_threshold(10**7)
            gc.collect()
            request = {"stream": client.chat_completion(MESSAGES, model="m", max_tokens=5, stream=True)}
            next(iter(request["stream"]))
            request["self"] = request  # dropped in a cycle: freed by the collector, when it next runs
            del request
            huggingface_hub.close_session()  # its connection pool retired (httpcore#996 is another hang)
            faulthandler.dump_traceback_later(10, exit=True)
            gc.set_threshold(gc.get_count()[0] + m)
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
            gc.set_threshold(10**7)
            faulthandler.cancel_dump_traceback_later()
    print("done", flush=True)
    """
)


def test_a_stream_collected_inside_the_shares_lock_does_not_hang_the_process(
    server: FakeInferenceServer, tmp_path: Path
) -> None:
    """shekel_core/ledger/waiting.py, `Tree.__init__`: "Reentrant: garbage collection may settle a dropped
    stream inside this thread's locked section" (`_call.iterate_sync`: "A stream dropped before it is read is
    settled when it is garbage-collected"). docs/hard-caps.md: "**No deadlock.**"

    The shares' lock of 806b40c (`shekel_core/_shares.py`: `LOCK = threading.Lock()`, "short sections only:
    no store is asked while it is held") is taken by every call of every shared budget, store up or down:
    `_sharing._apply` (each grant), `settle`, `_unhold_shares`, `_share_answers`, `share_of`. Python's cyclic
    collector runs at whichever allocation crosses its threshold, in the thread that allocates; a stream
    the program dropped in a reference cycle is then settled right there (`weakref.finalize` ->
    `CallAccounting.finish` -> `Budget.settle` -> `_sharing.settle` -> `_unhold_shares` -> `with
    shares.LOCK`). When that allocation is inside a section holding `shares.LOCK`, the thread waits for
    itself: the process hangs for ever (and every other thread with it at its next shared call).

    Observed (faulthandler's stack after 10 s): `_unhold_shares` waiting on the lock, called from the
    finalizer, called from the `<genexpr>` of `_sharing._share` inside `_apply`'s `with shares.LOCK`.
    Same with the store down and on_store_error="open" (inside `_share_answers`)."""
    script = tmp_path / "service.py"
    script.write_text(PROGRAM)
    done = subprocess.run(
        [sys.executable, str(script), server.url, f"sqlite:///{tmp_path / 'budgets.db'}"],
        capture_output=True,
        text=True,
        timeout=200,
    )
    stuck = "Timeout" in done.stderr and "in _unhold_shares" in done.stderr
    assert not stuck, "the process hung in shares.LOCK:\n" + done.stderr[-2500:]
    assert done.returncode == 0 and "done" in done.stdout, done.stderr[-2500:]

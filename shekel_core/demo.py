"""``python -m shekel.demo``: the Hugging Face page's examples against a local server, a budget stopping a
loop, and four processes sharing one budget in an SQLite file. Runs offline; needs ``huggingface_hub``
(``pip install "shekel[huggingface]"``)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

#: The shared budget the four demo processes spend together.
SHARED_CAP = 0.20
_PRICES = {"input": 1.0, "output": 2.0}


def main() -> int:
    try:
        from huggingface_hub import InferenceClient
    except ImportError:
        print('The demo needs huggingface_hub: pip install "shekel[huggingface]"', file=sys.stderr)
        return 1

    from shekel import BudgetExceededError, budget
    from shekel.testing import FakeInferenceServer

    prices = {"input": 0.001, "output": 0.001}
    model = "meta-llama/Llama-3.2-1B-Instruct"
    with FakeInferenceServer() as server:
        client = InferenceClient(base_url=server.url, token="your-hf-token")
        print(f"local Hugging Face-protocol server at {server.url}\n")

        print("== basic integration")
        with budget(max_usd=1.00, price_per_1k_tokens=prices) as b:
            response = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Explain transformers in one sentence."}],
                max_tokens=50,
            )
            print(response.choices[0].message.content)
            print(f"Cost: ${b.spent:.6f}\n")

        print("== streaming (usage requested by shekel, the extra chunk hidden)")
        with budget(max_usd=1.00, price_per_1k_tokens=prices) as b:
            for chunk in client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "List three ML frameworks."}],
                max_tokens=60,
                stream=True,
            ):
                delta = chunk.choices[0].delta.content
                if delta:
                    print(delta, end="", flush=True)
            print(f"\nCost: ${b.spent:.6f}\n")

        print("== nested budgets")
        with budget(max_usd=5.00, name="pipeline", price_per_1k_tokens=prices) as total:
            with budget(max_usd=1.00, name="step-1") as step1:
                client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "Summarise this document."}],
                    max_tokens=100,
                )
        print(f"Step 1: ${step1.spent:.6f}")
        print(f"Total:  ${total.spent:.6f}\n")

        print("== a hard cap stopping a loop")
        sent_before = server.request_count
        try:
            with budget(max_usd=0.002, name="loop", price_per_1k_tokens=prices) as b:
                for _ in range(100):
                    client.chat.completions.create(
                        model=model,
                        messages=[{"role": "user", "content": "Analyse this."}],
                        max_tokens=50,
                    )
        except BudgetExceededError as e:
            print(f"Stopped at ${e.spent:.6f} of ${e.limit}: {e}")
        print(
            f"{b.calls} calls reached the server ({server.request_count - sent_before} requests),"
            f" spent ${b.spent_exact} <= $0.002\n"
        )
        print(b.summary())
        print()
    with FakeInferenceServer(latency=0.05) as server:  # answers in 50 ms: the four processes overlap
        _shared_step(server.url)
    return 0


def _shared_step(url: str) -> None:
    """Four processes, one budget in an SQLite file: they spend it together and stop at its cap."""
    from shekel import budget

    print(f"== four processes sharing one ${SHARED_CAP:.2f} budget in an SQLite file")
    with tempfile.TemporaryDirectory() as folder:
        store = f"sqlite:///{Path(folder) / 'budgets.db'}"
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "shekel.demo", "--worker", url, store],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for worker in workers:  # all four started: let them go at once
            assert worker.stdout is not None
            worker.stdout.readline()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        columns = [json.loads(worker.communicate()[0]) for worker in workers]
        rows = max(len(c) for c in columns)
        print("  ".join(f"{f'process {i + 1}':<22}" for i in range(4)))
        for row in range(rows):
            cells = [column[row] if row < len(column) else "" for column in columns]
            print("  ".join(f"{cell:<22}" for cell in cells))
        shared = budget(max_usd=SHARED_CAP, name="demo-fleet", store=store, price_per_1k_tokens=_PRICES)
        print(
            f"together: {shared.calls} calls, ${shared.spent_exact} of ${SHARED_CAP:.2f}, "
            f"never more (zero overshoot across processes)"
        )
        shared._shared.store.close()  # type: ignore[union-attr]  # before the folder goes


def _worker(url: str, store: str) -> int:
    from huggingface_hub import InferenceClient

    from shekel import BudgetExceededError, budget

    client = InferenceClient(base_url=url)
    lines: list[str] = []
    print("ready", flush=True)
    sys.stdin.readline()
    with budget(max_usd=SHARED_CAP, name="demo-fleet", store=store, price_per_1k_tokens=_PRICES) as b:
        try:
            while True:
                client.chat_completion([{"role": "user", "content": "hi there"}], model="m", max_tokens=5)
                lines.append(f"call: shared ${b.spent:.3f}")
        except BudgetExceededError as e:
            lines.append(f"stopped ({e.reason})")
    print(json.dumps(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        raise SystemExit(_worker(sys.argv[2], sys.argv[3]))
    raise SystemExit(main())

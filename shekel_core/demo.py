"""``python -m shekel.demo``: the Hugging Face page's examples against a local server, then a budget
stopping a loop. Runs offline; needs ``huggingface_hub`` (``pip install "shekel[huggingface]"``)."""

from __future__ import annotations

import sys


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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

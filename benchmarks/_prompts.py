"""Typical chat prompts, written for the benchmarks: English prose, code, JSON, Chinese, a multi-turn chat with
a system prompt, and a call with tools. Each is ``(messages, tools)``."""

from __future__ import annotations

import json
from typing import Any

PROSE = (
    "The harbour town woke slowly that morning. Fishermen who had been out since before dawn were already "
    "hauling crates of mackerel up the slipway, and the smell of diesel and salt hung over the quay. In the "
    "bakery on the corner, the first trays of bread came out of the oven just as the church bell struck six. "
    "Nobody paid much attention to the grey car parked outside the harbour master's office, or to the woman "
    "inside it, who had been sitting there with the engine off for the better part of an hour. She watched "
    "the boats come in one by one, noting the names painted on their bows, and every so often she wrote "
    "something in a small notebook balanced on the steering wheel. When the last boat had tied up, she "
    "closed the notebook, stepped out into the cold, and walked towards the office with the unhurried pace "
    "of someone who already knew what she was going to find. Summarise this passage in three sentences, "
    "then list the details that suggest the woman is an investigator, and explain what she might be looking "
    "for. Keep the answer under two hundred words and write it for a reader who has not seen the passage."
)

CODE = '''Review this function and suggest improvements for correctness and speed:

```python
def merge_intervals(intervals):
    """Merge overlapping [start, end] intervals and return them sorted."""
    if not intervals:
        return []
    intervals = sorted(intervals, key=lambda pair: pair[0])
    merged = [list(intervals[0])]
    for start, end in intervals[1:]:
        last = merged[-1]
        if start <= last[1]:
            last[1] = max(last[1], end)
        else:
            merged.append([start, end])
    return merged


class RateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
```

Is `RateLimiter` safe to share between threads? If not, fix it.'''

_RECORDS = [
    {
        "id": 1000 + i,
        "sku": f"SKU-{7431 + i * 17:05d}",
        "name": name,
        "price": {"amount": round(9.99 + i * 3.25, 2), "currency": "EUR"},
        "in_stock": i % 3 != 0,
        "tags": tags,
        "updated_at": f"2026-11-{10 + i:02d}T08:{15 + i:02d}:00Z",
    }
    for i, (name, tags) in enumerate(
        [
            ("Ceramic mug, 350 ml", ["kitchen", "ceramic"]),
            ("Steel water bottle", ["outdoor", "steel", "insulated"]),
            ("Linen tea towel", ["kitchen", "linen"]),
            ("Bamboo cutting board", ["kitchen", "bamboo"]),
            ("Cast iron skillet, 26 cm", ["kitchen", "cast-iron"]),
            ("Glass storage jar", ["pantry", "glass"]),
        ]
    )
]
JSON_PROMPT = (
    "Here is our product feed as JSON. Return only the products that are out of stock, as a JSON array of "
    "their SKUs, and the total price of the ones in stock.\n\n" + json.dumps({"products": _RECORDS}, indent=2)
)

CHINESE = (
    "请阅读下面这段文字，并用三句话概括它的主要内容。"
    "近年来，越来越多的城市开始重视公共交通的发展。地铁线路不断延伸，公交车也逐渐改用电力驱动，"
    "这不仅减少了空气污染，也让市民的出行更加方便。与此同时，共享单车在短途出行中发挥了重要作用，"
    "很多人选择骑车到地铁站，再换乘地铁去上班。不过，城市交通仍然面临不少挑战，例如高峰时段的拥挤、"
    "老旧社区停车难，以及郊区与市中心之间的连接不够便捷。专家认为，未来的交通规划应当更加注重不同"
    "交通方式之间的衔接，并利用数据分析来优化线路和班次，从而提高整体效率。"
)

CHAT = [
    {
        "role": "system",
        "content": "You are a patient support assistant for a home broadband provider. Answer briefly, ask one "
        "question at a time, and never ask for the customer's password.",
    },
    {"role": "user", "content": "My internet keeps dropping every evening around 8pm. It's been a week."},
    {
        "role": "assistant",
        "content": "Sorry to hear that. When it drops, do the lights on the router change, and is it every "
        "device or only some of them?",
    },
    {
        "role": "user",
        "content": "All devices. The light labelled 'WAN' goes orange for a minute or two and then green again.",
    },
    {
        "role": "assistant",
        "content": "Thanks, that points to the line rather than your Wi-Fi. Is the router connected straight to "
        "the wall socket, or through an extension lead or splitter?",
    },
    {
        "role": "user",
        "content": "Through a splitter, because the phone is on the same socket. Does that matter?",
    },
]

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Lisbon"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]

PROMPTS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "English prose": ([{"role": "user", "content": PROSE}], None),
    "code": ([{"role": "user", "content": CODE}], None),
    "JSON": ([{"role": "user", "content": JSON_PROMPT}], None),
    "Chinese": ([{"role": "user", "content": CHINESE}], None),
    "multi-turn chat, system prompt": (CHAT, None),
    "short question with a tool": (
        [{"role": "user", "content": "What's the weather like in Lisbon right now?"}],
        TOOLS,
    ),
}

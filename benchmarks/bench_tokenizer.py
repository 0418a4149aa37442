"""6. Exact prompt counts: a model's first call loads its tokenizer, later calls count each prompt with it.

Compared in the same run with the byte heuristic that reserves without a tokenizer
(``_usage.prompt_tokens_estimates``): the time per prompt of typical kinds (``benchmarks/_prompts.py``), and
the prompt tokens each would reserve against the exact count (the ratio of reserved to real).

Tokenizers: ``SHEKEL_BENCH_TOKENIZERS`` names folders (separated by ``os.pathsep``), each holding a model's
``tokenizer.json`` and ``tokenizer_config.json`` (and ``chat_template.jinja``, if any); a folder without a chat
template gets ``benchmarks/llama3_style.jinja``. Without it, a byte-level BPE trained here on the prompts is
used: its load and encode times say little about a real model's 128k-151k vocabulary. The folders are laid out
in a temporary Hugging Face cache (``shekel.testing.add_to_hub_cache``), as a download would leave them.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shekel import _tokenizer
from shekel._usage import prompt_tokens_estimates
from shekel.testing import add_to_hub_cache

from ._harness import Row, count_calls, median, paired_ratio, time_batches, us
from ._prompts import PROMPTS

ENV = "SHEKEL_BENCH_TOKENIZERS"
LLAMA3_STYLE = Path(__file__).with_name("llama3_style.jinja")
_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _trained(folder: Path) -> None:
    """A small byte-level BPE with Llama 3's special tokens, trained on the benchmark's prompts."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = [json.dumps(messages) + json.dumps(tools) for messages, tools in PROMPTS.values()]
    tok.train_from_iterator(texts * 20, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": specials[0]}))


def _models(cache: Path) -> dict[str, str]:
    """Model id -> a label, each laid out in ``cache``."""
    folders = [Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    if not folders:
        folders = [Path(cache).parent / "trained-bpe"]
        _trained(folders[0])
    models = {}
    for folder in folders:
        files = {name: (folder / name).read_bytes() for name in _FILES if (folder / name).is_file()}
        if "chat_template.jinja" not in files and b'"chat_template"' not in files.get(
            "tokenizer_config.json", b""
        ):
            files["chat_template.jinja"] = LLAMA3_STYLE.read_bytes()
        model = f"bench/{folder.name}"
        add_to_hub_cache(cache, model, files)
        models[model] = folder.name
    return models


_FRESH = """
import json, os, sys, time
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
start, cpu, wall = rss(), time.process_time(), time.perf_counter()
import huggingface_hub, jinja2.sandbox, tokenizers
from shekel import _tokenizer
imported = rss()
assert _tokenizer.prompt_tokens(sys.argv[1], [{"role": "user", "content": "Hello"}]) is not None
print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall,
                  "imports": imported - start, "rss": rss() - imported}))
"""


def _fresh_process(model: str) -> dict[str, float]:
    """The first count of ``model`` in a new process: imports (tokenizers, jinja2, huggingface_hub), the
    tokenizer's load, the template's compilation, and the memory it all adds."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FRESH, model],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def _load_rows(models: dict[str, str], repeats: int) -> list[Row]:
    rows = []
    for model, label in models.items():
        fresh = [_fresh_process(model) for _ in range(repeats)]
        cpu_times, wall_times = [], []
        for _ in range(repeats):  # the load alone, in this process (imports done)
            _tokenizer.clear_cache()
            cpu, wall = time.process_time(), time.perf_counter()
            assert _tokenizer._tokenizer_for(model) is not None, f"{label}: the tokenizer did not load"
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            cpu_times.append(cpu)
            wall_times.append(wall)
        size = (Path(_hub(model)) / "tokenizer.json").stat().st_size
        first_cpu = median([f["cpu"] for f in fresh])
        first_wall = median([f["wall"] for f in fresh])
        rss = median([f["rss"] for f in fresh])
        imports = median([f["imports"] for f in fresh])
        rows.append(
            Row(
                group="6. tokenizer",
                name=f"first call of a model: {label} ({size / 1e6:.1f} MB tokenizer.json)",
                baseline="",
                time_text=f"in a new process {first_cpu * 1e3:,.0f} ms CPU, {first_wall * 1e3:,.0f} ms wall "
                f"(imports included), +{imports / 2**20:,.0f} MiB resident for the imports and "
                f"+{rss / 2**20:,.0f} MiB for the tokenizer; the load alone "
                f"{median(cpu_times) * 1e3:,.0f} ms CPU [{min(cpu_times) * 1e3:,.0f}-"
                f"{max(cpu_times) * 1e3:,.0f}], {median(wall_times) * 1e3:,.0f} ms wall",
                extra={
                    "first_cpu_ms": first_cpu * 1e3,
                    "first_wall_ms": first_wall * 1e3,
                    "rss_mib": rss / 2**20,
                    "imports_mib": imports / 2**20,
                    "load_cpu_ms": median(cpu_times) * 1e3,
                },
            )
        )
    return rows


def _hub(model: str) -> str:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(model, "tokenizer.json", cache_dir=os.environ["HF_HUB_CACHE"])
    assert isinstance(path, str)
    return os.path.dirname(path)


def _count_rows(models: dict[str, str], number: int, repeats: int) -> list[Row]:
    rows: list[Row] = []
    for model, label in models.items():
        _tokenizer.clear_cache()
        _tokenizer._tokenizer_for(model)  # the first call's load, measured above
        _tokenizer._compile.cache_clear()
        variants: dict[str, Callable[[int], object]] = {}
        for kind, (messages, tools) in PROMPTS.items():

            def heuristic(n: int, messages: Any = messages, tools: Any = tools) -> None:
                for _ in range(n):
                    prompt_tokens_estimates(messages, tools)

            def exact(n: int, messages: Any = messages, tools: Any = tools, model: str = model) -> None:
                for _ in range(n):
                    _tokenizer.chat_prompt_estimates(model, messages, tools)

            variants[f"{kind}|heuristic"] = heuristic
            variants[f"{kind}|exact"] = exact
        times = time_batches(variants, number=number, repeats=repeats)
        for kind, (messages, tools) in PROMPTS.items():
            calls_h = count_calls(variants[f"{kind}|heuristic"], 20)
            calls_e = count_calls(variants[f"{kind}|exact"], 20)
            t_h, t_e = median(times[f"{kind}|heuristic"]), median(times[f"{kind}|exact"])
            loaded = _tokenizer._tokenizer_for(model)
            assert loaded is not None
            rendered = _tokenizer._render(loaded, messages, tools)
            assert rendered is not None, f"{label} did not render {kind}"
            chars = len(rendered)  # what is encoded: the template's text included
            rows.append(
                Row(
                    group="6. tokenizer",
                    name=f"later call, {label}: {kind} ({chars:,} chars rendered)",
                    baseline="byte heuristic",
                    time_text=f"{us(t_e)} vs {us(t_h)} ({(t_e - t_h) / chars * 1e9:,.0f} ns per char)",
                    time_ratio=paired_ratio(times, f"{kind}|exact", f"{kind}|heuristic"),
                    wall_ratio=paired_ratio(times.wall, f"{kind}|exact", f"{kind}|heuristic"),
                    calls_text=f"{calls_e:,.0f} vs {calls_h:,.0f}",
                    calls_ratio=calls_e / calls_h,
                    extra={"us": t_e * 1e6, "heuristic_us": t_h * 1e6},
                )
            )
        info = _tokenizer.cache_info()
        compiled = _tokenizer._compile.cache_info()
        reloaded = info.loads != 1 or compiled.misses != 0  # cleared after the load above
        rows.append(
            Row(
                group="6. tokenizer",
                name=f"later calls, {label}: loads and template compilations",
                baseline="",
                time_text=f"{info.loads} load, {compiled.misses} compilation(s) for {info.hits:,} counts",
                target="1 load, 0 compilations",
                ok=not reloaded,
            )
        )
    return rows


def _absent_row(number: int, repeats: int) -> Row:
    """What every call pays for a model without a tokenizer (most calls of most users): the estimate's
    look-up of the model, against the byte heuristic alone."""
    messages, tools = PROMPTS["multi-turn chat, system prompt"]
    model = "bench/no-tokenizer:together"
    _tokenizer.chat_prompt_estimates(model, messages, tools)  # the one look-up in the cache

    def heuristic(n: int) -> None:
        for _ in range(n):
            prompt_tokens_estimates(messages, tools)

    def estimates(n: int) -> None:
        for _ in range(n):
            _tokenizer.chat_prompt_estimates(model, messages, tools)

    variants: dict[str, Callable[[int], object]] = {"heuristic": heuristic, "estimates": estimates}
    times = time_batches(variants, number=number, repeats=repeats)
    calls = {name: count_calls(fn, 50) for name, fn in variants.items()}
    return Row(
        group="6. tokenizer",
        name="a model without a tokenizer: chat_prompt_estimates",
        baseline="byte heuristic",
        time_text=f"{us(median(times['estimates']))} vs {us(median(times['heuristic']))}",
        time_ratio=paired_ratio(times, "estimates", "heuristic"),
        wall_ratio=paired_ratio(times.wall, "estimates", "heuristic"),
        calls_text=f"{calls['estimates']:,.0f} vs {calls['heuristic']:,.0f}",
        calls_ratio=calls["estimates"] / calls["heuristic"],
        extra={"calls_added": calls["estimates"] - calls["heuristic"]},
    )


def _ratio_rows(models: dict[str, str]) -> list[Row]:
    rows = []
    for model, label in models.items():
        for kind, (messages, tools) in PROMPTS.items():
            real = _tokenizer.prompt_tokens(model, messages, tools)
            assert real is not None, f"{label} did not count {kind}"
            heuristic, _ = prompt_tokens_estimates(messages, tools)
            high, fair = _tokenizer.chat_prompt_estimates(model, messages, tools)
            rows.append(
                Row(
                    group="6. tokenizer",
                    name=f"reserved / real prompt tokens, {label}: {kind}",
                    baseline="exact count",
                    time_text=f"byte heuristic {heuristic:,} = {heuristic / real:.2f}x; exact + margin "
                    f"{high:,} = {high / real:.2f}x; real {real:,}",
                    extra={"real": real, "heuristic": heuristic, "high": high, "fair": fair},
                )
            )
    return rows


def run(quick: bool = False) -> list[Row]:
    try:
        import jinja2  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return [Row(group="6. tokenizer", name='skipped: pip install "shekel[tokenizers]"', baseline="")]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "hub"
        previous = os.environ.get("HF_HUB_CACHE")
        os.environ["HF_HUB_CACHE"] = str(cache)
        try:
            models = _models(cache)
            rows = _load_rows(models, 1 if quick else 3)
            rows += _count_rows(models, 20 if quick else 100, 3 if quick else 11)
            rows += _ratio_rows(models)
            rows.append(_absent_row(2000 if quick else 10000, 3 if quick else 11))
        finally:
            _tokenizer.clear_cache()
            if previous is None:
                os.environ.pop("HF_HUB_CACHE", None)
            else:
                os.environ["HF_HUB_CACHE"] = previous
    return rows

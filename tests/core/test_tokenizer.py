"""Exact prompt counts from a real tokenizer in a real (temporary) Hugging Face cache.

The tokenizer is a byte-level BPE trained here with the ``tokenizers`` package, with Llama-3-style and
ChatML special tokens; its ``tokenizer.json`` and a ``tokenizer_config.json`` with a chat template are laid
out in a temporary cache exactly as ``hf_hub_download`` leaves them (checked against huggingface_hub's own
cache scanner and, over loopback, against its own downloader).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")
huggingface_hub = pytest.importorskip("huggingface_hub")

from shekel import _tokenizer  # noqa: E402
from shekel import tokenizers as shekel_tokenizers  # noqa: E402
from shekel._usage import prompt_tokens_estimates, text_tokens_fair, text_tokens_high  # noqa: E402
from shekel.testing import add_to_hub_cache  # noqa: E402

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
HEADER_START, HEADER_END, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIALS = [BOS, EOS, HEADER_START, HEADER_END, EOT, IM_START, IM_END]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A budget puts a hard cap on what language model calls may spend.",
    "Tokens are counted before the request is sent, and settled afterwards.",
    "def count(tokens): return len(tokens)  # code is text too",
    '{"name": "get_weather", "arguments": {"city": "Lisbon"}}',
    "system user assistant tool Today Date Cutting Knowledge",
]

# Llama 3 style: BOS, a system header with a date line (strftime_now), role headers, tools as JSON, and
# raise_exception for a role it does not know.
LLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Today Date: ' + strftime_now('%Y') + '\\n\\n' }}"
    "{%- if tools is not none %}{%- for tool in tools %}{{- tool | tojson }}{{- '\\n\\n' }}{%- endfor %}{%- endif %}"
    "{{- system }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['user', 'assistant'] %}"
    "{{- raise_exception('Unknown role: ' + message['role']) }}"
    "{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# ChatML with block tags on their own (indented) lines, as real templates are written: trim_blocks drops the
# newline after a block tag, lstrip_blocks the indentation before it; an expression keeps both (the expected
# text in the test below is what transformers 5.24's ``apply_chat_template`` renders from this template).
CHATML_TEMPLATE = (
    "{% for message in messages %}\n"
    "    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\n"
    "  {% endfor %}\n"
    "  {% if add_generation_prompt %}\n"
    "    {{ '<|im_start|>assistant\\n' }}\n"
    "  {% endif %}"
)
CHATML_TOOL_TEMPLATE = (
    "{{- '<|im_start|>system\\n# Tools\\n' }}"
    "{%- for tool in tools %}{{- tool | tojson }}{{- '\\n' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{{- '<|im_start|>assistant\\n' }}"
)

LLAMA, CHATML, JINJA_FILE = "test-org/llama-style", "test-org/chatml", "test-org/template-file"


def _train() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    # Special tokens the tokenizer adds itself (a text-generation prompt gets a BOS, as Llama's does).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    # Some tokenizer.json files carry truncation (embedding models: 512): a count must not be cut by it.
    tok.enable_truncation(max_length=24)
    return tok


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    return str(_train().to_str())


@pytest.fixture(scope="module")
def reference(tokenizer_json: str) -> Any:
    """The same tokenizer, untruncated, to compute the expected counts with."""
    tok = tokenizers.Tokenizer.from_str(tokenizer_json)
    tok.no_truncation()
    return tok


def _config(template: object, **extra: object) -> str:
    return json.dumps(
        {
            "bos_token": BOS,
            # as many configs write it: an AddedToken as a dict
            "eos_token": {"__type": "AddedToken", "content": EOS, "lstrip": False, "rstrip": False},
            "pad_token": None,
            "add_bos_token": True,
            "chat_template": template,
            "tokenizer_class": "PreTrainedTokenizerFast",
            **extra,
        }
    )


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer_json: str) -> Iterator[Path]:
    """A Hugging Face cache with three models, as HF_HUB_CACHE; shekel's tokenizer cache emptied around."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("SHEKEL_TOKENIZER_DOWNLOAD", raising=False)
    add_to_hub_cache(
        cache, LLAMA, {"tokenizer.json": tokenizer_json, "tokenizer_config.json": _config(LLAMA_TEMPLATE)}
    )
    chatml_templates = [
        {"name": "default", "template": CHATML_TEMPLATE},
        {"name": "tool_use", "template": CHATML_TOOL_TEMPLATE},
    ]
    add_to_hub_cache(
        cache, CHATML, {"tokenizer.json": tokenizer_json, "tokenizer_config.json": _config(chatml_templates)}
    )
    # chat_template.jinja wins over the config's template, as in transformers.
    add_to_hub_cache(
        cache,
        JINJA_FILE,
        {
            "tokenizer.json": tokenizer_json,
            "tokenizer_config.json": _config("{{ raise_exception('the config template is not the one') }}"),
            "chat_template.jinja": CHATML_TEMPLATE,
        },
    )
    shekel_tokenizers.clear_cache()
    yield cache
    shekel_tokenizers.allow_download(None)
    shekel_tokenizers.clear_cache()


def _count(reference: Any, text: str) -> int:
    return len(reference.encode(text, add_special_tokens=False))


def _llama_text(system: str, turns: list[tuple[str, str]], tools: str = "") -> str:
    text = f"{BOS}{HEADER_START}system{HEADER_END}\n\nToday Date: {datetime.now():%Y}\n\n{tools}{system}{EOT}"
    for role, content in turns:
        text += f"{HEADER_START}{role}{HEADER_END}\n\n{content.strip()}{EOT}"
    return text + f"{HEADER_START}assistant{HEADER_END}\n\n"


CHAT = [
    {"role": "system", "content": "You count tokens.  "},
    {"role": "user", "content": "The quick brown fox jumps over the lazy dog."},
    {"role": "assistant", "content": "A budget puts a hard cap on spending."},
    {"role": "user", "content": "Tokens are counted before the request is sent."},
]


# ------------------------------------------------------------------------------------------ the cache layout
def test_the_cache_is_laid_out_as_huggingface_hub_lays_it_out(hub: Path) -> None:
    info = huggingface_hub.scan_cache_dir(hub)
    assert not info.warnings  # a corrupted layout is reported here
    repos = {repo.repo_id: repo for repo in info.repos}
    assert set(repos) == {LLAMA, CHATML, JINJA_FILE}
    (revision,) = repos[LLAMA].revisions
    assert revision.refs == frozenset({"main"})
    assert {f.file_name for f in revision.files} == {"tokenizer.json", "tokenizer_config.json"}
    path = huggingface_hub.try_to_load_from_cache(LLAMA, "tokenizer.json", cache_dir=hub)
    assert isinstance(path, str) and Path(path).resolve().parent.name == "blobs"


# ------------------------------------------------------------------------------------------ exact counts
def test_a_chat_prompt_is_counted_exactly_template_tokens_included(hub: Path, reference: Any) -> None:
    expected_text = _llama_text("You count tokens.", [(m["role"], m["content"]) for m in CHAT[1:]])
    expected = _count(reference, expected_text)
    assert shekel_tokenizers.prompt_tokens(LLAMA, CHAT) == expected
    # The template's own tokens are in it: each special token is one token, and there are many of them.
    content_only = sum(_count(reference, m["content"]) for m in CHAT)
    specials = (
        1 + 3 * 4 + 3
    )  # BOS; header start, header end and eot per message (system included); the prompt
    assert expected > content_only + specials - 1
    assert _count(reference, EOT) == 1


def test_the_count_is_not_cut_by_the_truncation_a_tokenizer_json_carries(hub: Path, reference: Any) -> None:
    long = [{"role": "user", "content": " ".join(CORPUS) * 3}]
    count = shekel_tokenizers.prompt_tokens(LLAMA, long)
    assert count is not None and count > 24
    assert count == _count(reference, _llama_text("", [("user", long[0]["content"])]))


def test_chatml_rendered_with_trim_blocks_and_lstrip_blocks(hub: Path, reference: Any) -> None:
    messages = CHAT[1:3]
    expected_text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n\n" for m in messages)
    expected_text += f"    {IM_START}assistant\n\n"
    assert shekel_tokenizers.prompt_tokens(CHATML, messages) == _count(reference, expected_text)
    # chat_template.jinja is read before the config's template (which would raise)
    assert shekel_tokenizers.prompt_tokens(JINJA_FILE, messages) == _count(reference, expected_text)


def test_tools_are_rendered_with_tojson_and_the_tool_use_template(hub: Path, reference: Any) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"city": "Lisbon é"}}}]
    messages = [{"role": "user", "content": "The weather in Lisbon?"}]
    # transformers' tojson: no HTML escaping, no ASCII escaping, default separators
    dumped = json.dumps(tools[0], ensure_ascii=False)
    llama = _llama_text("", [("user", messages[0]["content"])], tools=dumped + "\n\n")
    assert shekel_tokenizers.prompt_tokens(LLAMA, messages, tools) == _count(reference, llama)
    chatml = (
        f"{IM_START}system\n# Tools\n{dumped}\n{IM_END}\n{IM_START}user\nThe weather in Lisbon?{IM_END}\n"
    )
    chatml += f"{IM_START}assistant\n"
    assert shekel_tokenizers.prompt_tokens(CHATML, messages, tools) == _count(reference, chatml)


def test_huggingface_hub_dataclasses_and_text_parts(hub: Path, reference: Any) -> None:
    from huggingface_hub import ChatCompletionInputMessage, ChatCompletionInputMessageChunk

    as_dicts = [{"role": m["role"], "content": m["content"]} for m in CHAT]
    typed = [ChatCompletionInputMessage(role=m["role"], content=m["content"]) for m in CHAT]
    assert shekel_tokenizers.prompt_tokens(LLAMA, typed) == shekel_tokenizers.prompt_tokens(LLAMA, as_dicts)
    parts = [
        ChatCompletionInputMessageChunk(type="text", text="The quick brown fox"),
        ChatCompletionInputMessageChunk(type="text", text="jumps over the lazy dog."),
    ]
    chunked = [ChatCompletionInputMessage(role="user", content=parts)]
    dict_parts = [{"role": "user", "content": [{"type": "text", "text": p.text} for p in parts]}]
    # Text parts are joined with a newline, as vLLM joins them for a text-only template.
    joined = "The quick brown fox\njumps over the lazy dog."
    expected = _count(reference, _llama_text("", [("user", joined)]))
    assert shekel_tokenizers.prompt_tokens(LLAMA, chunked) == expected
    assert shekel_tokenizers.prompt_tokens(LLAMA, dict_parts) == expected


def test_text_generation_prompts_get_the_tokenizers_special_tokens(hub: Path, reference: Any) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 4
    count = shekel_tokenizers.text_tokens(LLAMA, text)
    assert count == len(reference.encode(text)) == _count(reference, text) + 1  # the BOS TGI adds
    assert shekel_tokenizers.output_tokens(LLAMA, text) == _count(reference, text)
    pieces = ["The quick", " brown fox", " jumps over the lazy dog."]
    assert shekel_tokenizers.output_tokens(LLAMA, pieces) == _count(reference, "".join(pieces))
    assert shekel_tokenizers.output_tokens(LLAMA, "") == 0
    assert _tokenizer.text_prompt_estimates(LLAMA, text) == (count + _tokenizer.TEXT_MARGIN_TOKENS + 1, count)


@pytest.mark.parametrize("suffix", [":together", ":fastest", ":cheapest"])
def test_a_provider_suffix_is_not_part_of_the_model(hub: Path, suffix: str) -> None:
    assert shekel_tokenizers.prompt_tokens(LLAMA + suffix, CHAT) == shekel_tokenizers.prompt_tokens(
        LLAMA, CHAT
    )


# ------------------------------------------------------------------------------------------ no count
@pytest.mark.parametrize(
    "model",
    [
        None,
        "",
        "test-org/not-in-the-cache",
        "https://router.huggingface.co/v1",
        "http://127.0.0.1:8080",
        f"https://router.huggingface.co/hf-inference/models/{LLAMA}",
        "a/b/c",
        "org--name/x",
        "../../etc/passwd",
    ],
)
def test_no_count_for_models_without_a_tokenizer_in_the_cache(hub: Path, model: str | None) -> None:
    assert shekel_tokenizers.prompt_tokens(model, CHAT) is None
    assert shekel_tokenizers.text_tokens(model, "hello") is None
    assert shekel_tokenizers.output_tokens(model, "hello") is None
    high, fair = _tokenizer.chat_prompt_estimates(model, CHAT)
    assert (high, fair) == prompt_tokens_estimates(CHAT)
    assert _tokenizer.text_prompt_estimates(model, "hello") == (
        text_tokens_high("hello"),
        text_tokens_fair("hello"),
    )


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": "What is in it?"}, {"type": "image_url", "image_url": {"url": "data:,x"}}],
        [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
        42,
    ],
)
def test_no_count_for_images_and_unknown_content(hub: Path, content: object) -> None:
    messages = [{"role": "user", "content": content}]
    assert shekel_tokenizers.prompt_tokens(LLAMA, messages) is None
    assert _tokenizer.chat_prompt_estimates(LLAMA, messages) == prompt_tokens_estimates(messages)


def test_no_count_for_messages_without_a_role(hub: Path) -> None:
    from dataclasses import dataclass

    @dataclass
    class Message:  # LangChain's messages name the role "type"; templates read "role"
        type: str
        content: str

    assert shekel_tokenizers.prompt_tokens(LLAMA, [Message("human", "Hello")]) is None
    assert shekel_tokenizers.prompt_tokens(LLAMA, [{"content": "Hello"}]) is None
    assert shekel_tokenizers.prompt_tokens(LLAMA, ["Hello"]) is None

    @dataclass
    class WithRole:  # a plain dataclass (not a dict) with what templates read
        role: str
        content: str

    counted = shekel_tokenizers.prompt_tokens(LLAMA, [WithRole("user", "Hello")])
    assert counted is not None
    assert counted == shekel_tokenizers.prompt_tokens(LLAMA, [{"role": "user", "content": "Hello"}])


def test_image_in_a_huggingface_hub_chunk(hub: Path) -> None:
    from huggingface_hub import (
        ChatCompletionInputMessage,
        ChatCompletionInputMessageChunk,
        ChatCompletionInputURL,
    )

    image = ChatCompletionInputMessageChunk(type="image_url", image_url=ChatCompletionInputURL(url="data:,x"))
    message = ChatCompletionInputMessage(role="user", content=[image])
    assert shekel_tokenizers.prompt_tokens(LLAMA, [message]) is None


def test_a_template_that_raises_gives_no_count_and_never_raises(hub: Path) -> None:
    messages = [{"role": "narrator", "content": "Once upon a time"}]  # raise_exception in the template
    assert shekel_tokenizers.prompt_tokens(LLAMA, messages) is None
    assert _tokenizer.chat_prompt_estimates(LLAMA, messages) == prompt_tokens_estimates(messages)
    # and no messages at all: the template indexes messages[0]
    assert shekel_tokenizers.prompt_tokens(LLAMA, []) is None
    assert shekel_tokenizers.prompt_tokens(LLAMA, CHAT) is not None  # the model still counts


def test_a_template_that_does_not_compile_still_counts_text(hub: Path, tokenizer_json: str) -> None:
    add_to_hub_cache(
        hub,
        "test-org/broken",
        {"tokenizer.json": tokenizer_json, "tokenizer_config.json": _config("{% for message in messages %}")},
    )
    add_to_hub_cache(hub, "test-org/no-template", {"tokenizer.json": tokenizer_json})
    for model in ("test-org/broken", "test-org/no-template"):
        assert shekel_tokenizers.prompt_tokens(model, CHAT) is None
        assert shekel_tokenizers.text_tokens(model, "The lazy dog.") is not None
    info = shekel_tokenizers.cache_info()
    assert info.loads == 2
    assert info.template_errors == {
        "test-org/broken": "the chat template does not compile: TemplateSyntaxError",
        "test-org/no-template": "no chat template",
    }


def test_a_jinja2_older_than_3_1_6_renders_nothing(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jinja2

    monkeypatch.setattr(jinja2, "__version__", "3.1.5")
    _tokenizer._environment.cache_clear()
    _tokenizer._compile.cache_clear()
    try:
        assert shekel_tokenizers.prompt_tokens(LLAMA, CHAT) is None
        assert shekel_tokenizers.text_tokens(LLAMA, "The lazy dog.") is not None
        assert "older than 3.1.6" in shekel_tokenizers.cache_info().template_errors[LLAMA]
    finally:
        _tokenizer._environment.cache_clear()
        _tokenizer._compile.cache_clear()


def test_the_sandbox_refuses_what_transformers_refuses(hub: Path, tokenizer_json: str) -> None:
    escapes = {
        "test-org/escape-class": "{{ messages.__class__.__mro__ }}",
        "test-org/escape-namespace": "{% set ns = namespace(_x=1) %}{{ ns }}",
        "test-org/escape-mutate": "{% set x = messages.append(1) %}{{ x }}",
    }
    for repo, template in escapes.items():
        add_to_hub_cache(
            hub, repo, {"tokenizer.json": tokenizer_json, "tokenizer_config.json": _config(template)}
        )
        assert shekel_tokenizers.prompt_tokens(repo, CHAT) is None, repo


def test_generation_blocks_and_loop_controls_render(hub: Path, tokenizer_json: str, reference: Any) -> None:
    template = (
        "{%- for message in messages %}{%- if loop.index > 2 %}{% break %}{% endif %}"
        "{%- generation %}{{ message.content }}{% endgeneration %}{%- endfor %}"
        "{{- dict(a=1) | tojson }}{%- set ns = namespace(n=2) %}{{- ns.n }}"
    )
    add_to_hub_cache(
        hub,
        "test-org/extensions",
        {"tokenizer.json": tokenizer_json, "tokenizer_config.json": _config(template)},
    )
    expected = CHAT[0]["content"] + CHAT[1]["content"] + '{"a": 1}2'
    assert shekel_tokenizers.prompt_tokens("test-org/extensions", CHAT) == _count(reference, expected)


# ------------------------------------------------------------------------------------------ the margin
def test_reservations_add_the_margin_to_the_exact_count(hub: Path) -> None:
    exact = shekel_tokenizers.prompt_tokens(LLAMA, CHAT)
    assert exact is not None
    high, fair = _tokenizer.chat_prompt_estimates(LLAMA, CHAT)
    assert fair == exact
    assert high == exact + _tokenizer.prompt_margin(exact, len(CHAT), tools=False)
    assert high - exact == _tokenizer.PROMPT_MARGIN_TOKENS + len(CHAT) + -(-exact // 100)
    tools = [{"type": "function", "function": {"name": "f"}}]
    high_tools, _ = _tokenizer.chat_prompt_estimates(LLAMA, CHAT, tools)
    assert high_tools - shekel_tokenizers.prompt_tokens(LLAMA, CHAT, tools) >= _tokenizer.PROMPT_MARGIN_TOOLS
    # and the messages may be any iterable: read once for the count, once more for the heuristic if needed
    assert _tokenizer.chat_prompt_estimates(LLAMA, iter(CHAT)) == (high, fair)
    narrator = [{"role": "narrator", "content": "x"}]
    assert _tokenizer.chat_prompt_estimates(LLAMA, iter(narrator)) == prompt_tokens_estimates(narrator)


def test_tools_a_template_ignores_are_counted_as_the_json_a_server_adds(hub: Path, reference: Any) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"city": "Lisbon"}}}]
    messages = CHAT[1:2]
    # JINJA_FILE's ChatML template never reads ``tools``: TGI then puts them into the prompt as JSON itself.
    exact = shekel_tokenizers.prompt_tokens(JINJA_FILE, messages, tools)
    assert exact == shekel_tokenizers.prompt_tokens(JINJA_FILE, messages)
    assert exact is not None
    as_json = _count(reference, json.dumps(tools, ensure_ascii=False))
    high, fair = _tokenizer.chat_prompt_estimates(JINJA_FILE, messages, tools)
    assert fair == exact + as_json
    assert high == fair + _tokenizer.prompt_margin(fair, 1, tools=True)
    # LLAMA's template renders the tools: nothing is added but the margin.
    llama_exact = shekel_tokenizers.prompt_tokens(LLAMA, messages, tools)
    assert _tokenizer.chat_prompt_estimates(LLAMA, messages, tools)[1] == llama_exact


# ------------------------------------------------------------------------------------------ the cache
def _count_loads(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[str]:
    loads: list[str] = []
    original = _tokenizer._load

    def counting(repo: str) -> Any:
        loads.append(repo)
        time.sleep(delay)
        return original(repo)

    monkeypatch.setattr(_tokenizer, "_load", counting)
    return loads


def test_each_model_is_loaded_once(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _count_loads(monkeypatch)
    for _ in range(20):
        shekel_tokenizers.prompt_tokens(LLAMA, CHAT)
        shekel_tokenizers.text_tokens(LLAMA + ":together", "hello")
        shekel_tokenizers.prompt_tokens(CHATML, CHAT)
    assert sorted(loads) == [CHATML, LLAMA]
    info = shekel_tokenizers.cache_info()
    assert info.loads == 2 and info.loaded == (LLAMA, CHATML) and info.hits == 60
    assert all(seconds > 0 for seconds in info.load_seconds.values())
    assert shekel_tokenizers.preload(LLAMA, "test-org/missing") == {LLAMA: True, "test-org/missing": False}
    assert loads.count(LLAMA) == 1


def test_templates_are_compiled_once(hub: Path) -> None:
    _tokenizer._compile.cache_clear()
    for _ in range(10):
        shekel_tokenizers.prompt_tokens(CHATML, CHAT)
        shekel_tokenizers.prompt_tokens(JINJA_FILE, CHAT)  # the same template text: compiled once for both
    info = _tokenizer._compile.cache_info()
    assert info.misses == 2  # CHATML's default and tool_use templates; JINJA_FILE's is the same text


def test_the_cache_is_bounded(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tokenizer, "MAX_TOKENIZERS", 2)
    loads = _count_loads(monkeypatch)
    for model in (LLAMA, CHATML, JINJA_FILE, LLAMA):
        assert shekel_tokenizers.prompt_tokens(model, CHAT) is not None
    assert loads == [LLAMA, CHATML, JINJA_FILE, LLAMA]  # LLAMA was evicted, least recently used
    assert shekel_tokenizers.cache_info().loaded == (JINJA_FILE, LLAMA)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return time.perf_counter()


def test_a_missing_tokenizer_is_looked_up_again_after_a_while(
    hub: Path, monkeypatch: pytest.MonkeyPatch, tokenizer_json: str
) -> None:
    clock = _Clock()
    monkeypatch.setattr(_tokenizer, "time", clock)
    loads = _count_loads(monkeypatch)
    late = "test-org/added-later"
    for _ in range(5):
        assert shekel_tokenizers.prompt_tokens(late, CHAT) is None
    assert loads == [late]  # looked up once, then remembered as absent
    assert "no tokenizer.json" in shekel_tokenizers.cache_info().absent[late]
    add_to_hub_cache(
        hub, late, {"tokenizer.json": tokenizer_json, "tokenizer_config.json": _config(LLAMA_TEMPLATE)}
    )
    clock.now += _tokenizer.ABSENT_RETRY_SECONDS - 1
    assert shekel_tokenizers.prompt_tokens(late, CHAT) is None
    clock.now += 2
    assert shekel_tokenizers.prompt_tokens(late, CHAT) == shekel_tokenizers.prompt_tokens(LLAMA, CHAT)
    assert loads == [late, late, LLAMA]
    assert late not in shekel_tokenizers.cache_info().absent


def test_a_corrupt_tokenizer_is_absent_not_an_error(hub: Path) -> None:
    add_to_hub_cache(hub, "test-org/corrupt", {"tokenizer.json": "{not json"})
    assert shekel_tokenizers.prompt_tokens("test-org/corrupt", CHAT) is None
    assert shekel_tokenizers.cache_info().absent["test-org/corrupt"].startswith("loading failed")


def test_threads_share_one_load_and_get_exact_counts(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _count_loads(monkeypatch, delay=0.2)  # a slow load, so that threads arrive while it runs
    start = threading.Barrier(16)

    def work(i: int) -> list[int | None]:
        model = (LLAMA, CHATML)[i % 2]
        start.wait()
        return [shekel_tokenizers.prompt_tokens(model, CHAT[: 1 + j % 4]) for j in range(50)]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(work, range(16)))
    assert sorted(loads) == [CHATML, LLAMA]  # every thread waited for the one load of its model
    for i, counts in enumerate(results):
        model = (LLAMA, CHATML)[i % 2]
        assert counts == [shekel_tokenizers.prompt_tokens(model, CHAT[: 1 + j % 4]) for j in range(50)]
        assert all(isinstance(c, int) for c in counts)
    assert shekel_tokenizers.cache_info().loads == 2


# ------------------------------------------------------------------------------------------ imports, download
def test_importing_shekel_imports_none_of_the_extra(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, shekel, shekel.tokenizers\n"
        "loaded = [m for m in ('tokenizers', 'jinja2', 'huggingface_hub') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


class _FakeHub:
    """The part of the Hub's HTTP API ``hf_hub_download`` uses (HEAD and GET of ``/{repo}/resolve/{rev}/{file}``),
    on 127.0.0.1."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, files: dict[str, dict[str, bytes]]) -> None:
        self.files = files
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                repo, _, rest = self.path.lstrip("/").partition("/resolve/")
                _, _, filename = rest.partition("/")
                data = hub.files.get(repo, {}).get(filename)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", hub.COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                import hashlib

                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(hub: Path, monkeypatch: pytest.MonkeyPatch, tokenizer_json: str) -> Iterator[_FakeHub]:
    files = {"test-org/remote": {"tokenizer.json": tokenizer_json.encode(), "tokenizer_config.json": b""}}
    files["test-org/remote"]["tokenizer_config.json"] = _config(LLAMA_TEMPLATE).encode()
    server = _FakeHub(files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    yield server
    server.close()


def test_nothing_is_downloaded_unless_allowed(fake_hub: _FakeHub) -> None:
    assert shekel_tokenizers.prompt_tokens("test-org/remote", CHAT) is None
    assert fake_hub.requests == []


@pytest.mark.parametrize("opt_in", ["environment", "function"])
def test_download_when_allowed_goes_through_huggingface_hubs_cache(
    hub: Path, fake_hub: _FakeHub, monkeypatch: pytest.MonkeyPatch, opt_in: str
) -> None:
    """The opt-in downloads with ``hf_hub_download`` (here from a Hub on 127.0.0.1): the files land in the
    cache laid out as ``add_to_hub_cache`` lays them out, and the count is the same as from a cached model."""
    if opt_in == "environment":
        monkeypatch.setenv("SHEKEL_TOKENIZER_DOWNLOAD", "1")
    else:
        shekel_tokenizers.allow_download()
    assert shekel_tokenizers.prompt_tokens("test-org/remote", CHAT) == shekel_tokenizers.prompt_tokens(
        LLAMA, CHAT
    )
    assert any(r.startswith("GET /test-org/remote/resolve/main/tokenizer.json") for r in fake_hub.requests)
    downloaded = hub / "models--test-org--remote"
    laid_out = hub / "models--test-org--llama-style"

    def shape(root: Path) -> set[tuple[str, ...]]:
        return {
            tuple("<hash>" if len(p) >= 40 else p for p in path.relative_to(root).parts)
            for path in root.rglob("*")
            if ".no_exist" not in path.parts and not path.name.endswith(".lock")
        }

    assert shape(laid_out) <= shape(downloaded)
    # chat_template.jinja is absent upstream: huggingface_hub remembers it (.no_exist), and so do we
    assert (
        huggingface_hub.try_to_load_from_cache("test-org/remote", "chat_template.jinja", cache_dir=hub)
        is not None
    )
    requests = len(fake_hub.requests)
    shekel_tokenizers.prompt_tokens("test-org/remote", CHAT)
    assert len(fake_hub.requests) == requests  # loaded once: no request on later calls


def test_downloads_can_be_switched_off_again(
    hub: Path, fake_hub: _FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHEKEL_TOKENIZER_DOWNLOAD", "1")
    shekel_tokenizers.allow_download(False)  # the function wins over the environment
    assert shekel_tokenizers.prompt_tokens("test-org/remote", CHAT) is None
    assert fake_hub.requests == []

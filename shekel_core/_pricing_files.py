"""Pricing files: TOML or JSON maps of model ids (optionally per provider) to input/output prices.

::

    unit = "per_1m_tokens"            # or "per_1k_tokens"; required, because a wrong guess is a 1000x error

    [models."meta-llama/Llama-3.3-70B-Instruct"]
    input = 0.88
    output = 0.88
    cached_input = 0.44               # optional

    [models."meta-llama/Llama-3.3-70B-Instruct".providers.novita]
    input = 0.50
    output = 0.60

    [models."black-forest-labs/FLUX.1-dev"]
    per_call = 0.003                  # USD per call, whatever the unit: media tasks (images, speech...)

    [models."*"]                      # optional: every other model
    input = 1.0
    output = 2.0

A file is read when the budget is built (so mistakes surface there), and cached until it changes. It must be a
regular file ending in ``.toml`` or ``.json``, of at most ``MAX_FILE_BYTES``, checked before it is opened.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK
from typing import Any

from ._money import MILLION, THOUSAND, ZERO
from ._pricing import Price, PriceTable, price_problem
from .errors import PricingError

#: The environment variable naming a pricing file used by every budget (after any ``pricing=``).
ENV_VAR = "SHEKEL_PRICING"

#: The largest pricing file shekel reads (8 MiB): thousands of models fit in a small part of it.
MAX_FILE_BYTES = 8 * 1024 * 1024
_UNITS = {"per_1k_tokens": THOUSAND, "per_1m_tokens": MILLION}
_TOP_KEYS = frozenset({"unit", "models"})
_ENTRY_KEYS = frozenset({"input", "output", "cached_input", "per_call", "providers"})
_PRICE_ORDER = ("input", "output", "cached_input")
_PRICE_KEYS = frozenset((*_PRICE_ORDER, "per_call"))
_EXAMPLE = (
    'e.g. unit = "per_1m_tokens" then [models."org/model"] with input = 0.5 and output = 1.5 '
    "(see docs/pricing.md)"
)

_lock = threading.Lock()
_cache: dict[tuple[str, int, int], PriceTable] = {}


def load_pricing_file(path: str | os.PathLike[str], *, origin: str = "pricing=") -> PriceTable:
    """Read and validate a pricing file. Raises :class:`PricingError` naming the file, key or line, and fix."""
    if not isinstance(path, (str, os.PathLike)):
        raise PricingError(
            f"{origin} must be the path of a .toml or .json pricing file, got {_shown(path)} "
            f"({type(path).__name__})."
        )
    file = Path(path).expanduser()
    where = f"pricing file {_shown(str(file), cut=False)}"
    # Everything that can be known without opening the file is checked first: opening a FIFO blocks until
    # someone writes to it, and a device such as /dev/zero never ends.
    if file.suffix.lower() not in _PARSERS:
        raise PricingError(
            f"{where} (from {origin}) must end in .toml or .json, got {_shown(file.suffix or 'no suffix')}. "
            "Name a pricing file (see docs/pricing.md)."
        )
    try:
        stat = file.stat()
    except OSError as exc:
        raise PricingError(
            f"{where} (from {origin}) cannot be read: {exc.strerror or type(exc).__name__}. "
            "Check the path, or unset it."
        ) from None
    _check_kind_and_size(where, origin, stat)
    key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    table = _parse(file, _decode(file, where, _read_bytes(file, where, origin)))
    with _lock:
        _cache[key] = table
    return table


def env_pricing() -> PriceTable | None:
    """The table of the file named by ``SHEKEL_PRICING``, or None when it is unset or empty."""
    path = os.environ.get(ENV_VAR, "").strip()
    return load_pricing_file(path, origin=f"the {ENV_VAR} environment variable") if path else None


def _check_kind_and_size(where: str, origin: str, stat: os.stat_result) -> None:
    if not S_ISREG(stat.st_mode):
        kind = next((name for test, name in _KINDS if test(stat.st_mode)), "not a file")
        raise PricingError(
            f"{where} (from {origin}) is {kind}, not a regular file. Name a .toml or .json file "
            "(see docs/pricing.md)."
        )
    if stat.st_size > MAX_FILE_BYTES:
        raise PricingError(
            f"{where} is {stat.st_size:,} bytes; a pricing file may be at most {MAX_FILE_BYTES:,} bytes. "
            "Keep only the models you call in it."
        )


def _read_bytes(file: Path, where: str, origin: str) -> bytes:
    # O_NONBLOCK: if the path was swapped for a FIFO since it was checked, opening it does not wait for a
    # writer. The kind and size are checked again on what was opened, and no more than the limit is read.
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = os.open(file, flags)
        with open(fd, "rb", closefd=True) as stream:
            _check_kind_and_size(where, origin, os.fstat(stream.fileno()))
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PricingError(
            f"{where} (from {origin}) cannot be read: {exc.strerror or type(exc).__name__}. "
            "Check the path, or unset it."
        ) from None
    if len(data) > MAX_FILE_BYTES:  # it grew while being read
        raise PricingError(
            f"{where} is larger than {MAX_FILE_BYTES:,} bytes, the most a pricing file may be."
        )
    return data


def _decode(file: Path, where: str, data: bytes) -> Any:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PricingError(
            f"{where} is not UTF-8 text (byte {exc.start}): save it as UTF-8 (see docs/pricing.md)."
        ) from None
    try:
        return _PARSERS[file.suffix.lower()](text, where)
    except RecursionError:
        raise PricingError(
            f"{where} is nested too deeply to be a pricing file: one nests at most four tables (models, "
            f"a model, providers, a provider), {_EXAMPLE}."
        ) from None


def _load_json(text: str, where: str) -> Any:
    try:
        # Whole numbers as Decimal too: int() refuses very long ones, and prices are Decimal anyway.
        return json.loads(text, parse_float=Decimal, parse_int=Decimal)
    except json.JSONDecodeError as exc:
        raise PricingError(
            f"{where} is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
        ) from None


def _load_toml(text: str, where: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]
    try:
        return tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise PricingError(f"{where} is not valid TOML: {exc}.") from None
    except ValueError:  # int() refuses whole numbers of more than sys.get_int_max_str_digits() digits
        raise PricingError(
            f"{where} holds a number too long to read (thousands of digits); a price needs only a few. "
            "Fix the number."
        ) from None


_PARSERS: dict[str, Callable[[str, str], Any]] = {".json": _load_json, ".toml": _load_toml}
_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (S_ISDIR, "a directory"),
    (S_ISFIFO, "a named pipe (FIFO)"),
    (S_ISCHR, "a character device"),
    (S_ISBLK, "a block device"),
    (S_ISSOCK, "a socket"),
)


def _parse(file: Path, data: Any) -> PriceTable:
    where = f"pricing file {_shown(str(file), cut=False)}"
    if not isinstance(data, Mapping):
        raise PricingError(f"{where} must hold a table with 'unit' and 'models', {_EXAMPLE}.")
    unknown = sorted(str(k) for k in data if k not in _TOP_KEYS)
    if unknown:
        raise PricingError(
            f"{where} has unknown top-level key(s) {', '.join(map(_shown, unknown))}; "
            f"the known keys are 'unit' and 'models', {_EXAMPLE}."
        )
    unit = data.get("unit")
    if unit not in _UNITS:
        raise PricingError(
            f'{where}: \'unit\' must be "per_1k_tokens" or "per_1m_tokens", got {_shown(unit)}. Say which: '
            "shekel does not guess, because the two differ 1000 times."
        )
    models = data.get("models")
    if not isinstance(models, Mapping) or not models:
        raise PricingError(f"{where}: 'models' must be a non-empty table of model ids, {_EXAMPLE}.")
    per = _UNITS[unit]
    source = f"pricing file {file.name!r}"
    per_model: dict[str, Price] = {}
    per_provider: dict[tuple[str, str], Price] = {}
    for model, entry in models.items():
        at = f"models.{_quote(model)}"
        _check_table(
            where,
            at,
            entry,
            _ENTRY_KEYS,
            f", {_EXAMPLE}",
            "'input', 'output', 'cached_input', 'per_call' and 'providers'",
        )
        if _PRICE_KEYS & set(entry) or "providers" not in entry:
            per_model[model] = _price(where, at, entry, per, source, None)
        providers = entry.get("providers", {})
        if not isinstance(providers, Mapping):
            raise PricingError(f"{where}: {at}.providers must be a table of provider names, {_EXAMPLE}.")
        for provider, price in providers.items():
            place = f"{at}.providers.{_quote(provider)}"
            _check_table(
                where, place, price, _PRICE_KEYS, "", "'input', 'output', 'cached_input' and 'per_call'"
            )
            per_provider[(model, provider)] = _price(where, place, price, per, source, provider)
    return PriceTable(flat=None, per_model=per_model, per_provider=per_provider)


def _check_table(
    where: str, at: str, value: object, known: frozenset[str], example: str, known_text: str
) -> None:
    """A price entry must be a table holding only ``known`` keys."""
    if not isinstance(value, Mapping):
        raise PricingError(f"{where}: {at} must be a table with 'input' and 'output'{example}.")
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise PricingError(
            f"{where}: {at} has unknown key(s) {', '.join(map(_shown, unknown))}; the known keys are {known_text}."
        )


def _price(
    where: str, at: str, entry: Mapping[str, Any], per: Decimal, source: str, provider: str | None
) -> Price:
    missing = [k for k in ("input", "output") if k not in entry]
    # A per-call price alone is whole (a media task's); tokens priced beside it need both their prices.
    if missing and ("per_call" not in entry or len(missing) == 1 or "cached_input" in entry):
        raise PricingError(f"{where}: {at} is missing {' and '.join(map(repr, missing))}, {_EXAMPLE}.")
    amounts = {k: _amount(where, f"{at}.{k}", entry[k], per) / per for k in _PRICE_ORDER if k in entry}
    per_call = None
    if "per_call" in entry:  # USD per call, whatever the file's unit
        per_call = _amount(where, f"{at}.per_call", entry["per_call"], Decimal(1))
    return Price(
        amounts.get("input", ZERO),
        amounts.get("output", ZERO),
        source if provider is None else f"{source}, provider {provider!r}",
        amounts.get("cached_input"),
        provider,
        per_call=per_call,
    )


def _amount(where: str, at: str, value: object, per: Decimal) -> Decimal:
    problem = ""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        problem = "must be a number"
    else:
        try:
            amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        except InvalidOperation:
            problem = "must be a number"
        else:
            if not amount.is_finite():
                problem = "must be a finite number"
            elif amount < 0:
                problem = "must not be negative"
            else:
                problem = price_problem(amount, per) or ""
                if not problem:
                    return amount
    raise PricingError(f"{where}: {at} {problem}, got {_shown(value)}. Give USD in the file's 'unit'.")


def _quote(key: object) -> str:
    text = str(key)
    if _looks_secret(text) or len(text) > _SHOWN_CHARS:
        return _shown(text)
    return text if text.replace("_", "").replace("-", "").isalnum() else json.dumps(text)


# Messages quote what the file (or the variable naming it) holds, which may be anything: an API token set in
# the wrong variable, or a number of thousands of digits. Those are described, not printed.
_SHOWN_CHARS = 80


@functools.cache
def _token_pattern() -> re.Pattern[str]:
    # Known token prefixes (Hugging Face, OpenAI, GitHub, Slack, Google), or a long run of letters and digits.
    return re.compile(
        r"(?<![A-Za-z0-9])(?P<prefixed>(?:hf_|sk-|sk_|ghp_|gho_|github_pat_|xox[abpr]-|AIza)[\w-]{8,})"
        r"|[A-Za-z0-9]{24,}"
    )


def _looks_secret(text: str) -> bool:
    for match in _token_pattern().finditer(text):
        run = match.group()
        if match.group("prefixed") or not (run.isdigit() or run.isalpha()):
            return True
    return False


def _shown(value: object, *, cut: bool = True) -> str:
    """``repr(value)`` for an error message, unless it looks like a token or (``cut``) is long: then only
    its length. Paths are shown however long they are."""
    text = str(value) if isinstance(value, Decimal) else repr(value)  # 1E+14, not Decimal('1E+14')
    if cut and len(text) > _SHOWN_CHARS:
        return f"a value of {len(text):,} characters (not shown)"
    if _looks_secret(text):
        return f"a value of {len(text)} characters that looks like a token (not shown)"
    return text

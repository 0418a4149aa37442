"""Reading the limits a call sends (``max_tokens``, ``n``...): shekel reserves for exactly what is sent.

A provider reads ``1000``, ``1000.0`` and ``"1000"`` alike (lenient JSON schemas), so those are sent as the
whole number ``1000``. Anything else (``2.5``, ``"1e3"``, ``""``, ``"abc"``, ``0``, negative numbers,
``True``) one provider rejects and another reads as some other number than shekel reserved for: such a
call is refused before it is sent, with :class:`shekel.RequestError`.
"""

from __future__ import annotations

from .errors import RequestError


def whole_number(value: object, name: str) -> int:
    """``value`` as the positive whole number a server reads it as; raises ``RequestError`` otherwise."""
    if type(value) is int and value > 0:
        return value
    whole: int | None = None
    if isinstance(value, bool):
        whole = None
    elif isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        whole = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        whole = int(value.strip())
    if whole is None or whole <= 0:
        raise RequestError(
            f"{name}={value!r} is not a whole number greater than 0, so shekel cannot reserve for what a "
            f"server would read it as; the request was not sent. Pass an int, e.g. {name}=200."
        )
    return whole

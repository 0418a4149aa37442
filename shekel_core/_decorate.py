"""``@budget(...)`` on functions: sync, async, generator and async generator functions.

Each call runs in a fresh budget. A generator's body runs step by step, whenever its consumer asks for the
next item, so the fresh budget is made active around each step rather than around the call that only
creates the generator (which would leave the body outside any budget).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator
from typing import TYPE_CHECKING, Any

from ._context import activated

if TYPE_CHECKING:
    from ._budget import Budget


def decorate(fresh: Callable[[], Budget], fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` so that each call runs inside ``fresh()``; see the module docstring."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def run_async_generator(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            budget = _attached(fresh())
            generator = fn(*args, **kwargs)
            try:
                with activated(budget):
                    item = await generator.__anext__()
                while True:
                    try:
                        sent = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as exc:
                        with activated(budget):
                            item = await generator.athrow(exc)
                    else:
                        with activated(budget):
                            item = await generator.asend(sent)
            except StopAsyncIteration:
                return
            finally:
                with activated(budget):
                    await generator.aclose()

        return run_async_generator

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def run_generator(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            budget = _attached(fresh())
            generator = fn(*args, **kwargs)
            try:
                with activated(budget):
                    item = next(generator)
                while True:
                    try:
                        sent = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as exc:
                        with activated(budget):
                            item = generator.throw(exc)
                    else:
                        with activated(budget):
                            item = generator.send(sent)
            except StopIteration as stop:
                return stop.value
            finally:
                with activated(budget):
                    generator.close()

        return run_generator

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            async with fresh():
                return await fn(*args, **kwargs)

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with fresh():
            return fn(*args, **kwargs)

    return run


def _attached(budget: Budget) -> Budget:
    # Entering once fixes the budget's parent: the budget active where the generator is first iterated
    # (its body starts there; creating a generator runs none of it).
    with budget:
        return budget

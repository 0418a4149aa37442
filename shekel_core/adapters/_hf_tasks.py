"""The ``InferenceClient`` tasks besides chat and text generation, and how each is counted.

Every task is a call: it counts against ``max_llm_calls`` and is refused before it is sent. How it is priced
depends on what it takes and gives (docs/huggingface.md, "Every task"):

* **token tasks** take text: their input is priced per input token (estimated from the text with the model's
  tokenizer, else the byte heuristic), and summarization and translation also pay per output token for the
  text they answer. A ``per_call`` part of the model's price is added when it has one.
* **media tasks** make or read images, audio, video or tables: they are priced by the ``per_call`` part of
  the model's price only (``{"black-forest-labs/FLUX.1-dev": {"per_call": 0.003}}``). A model with only a
  token price counts as unpriced for them, and ``on_unknown_price`` decides: never a silent $0.

Token counts are estimates (the tasks' answers carry no usage), so their calls are marked estimated.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._budget import Budget, Reservation
from .._call import CallAccounting
from .._tokenizer import text_prompt_estimates
from .._usage import Usage


@dataclass(frozen=True, slots=True)
class Task:
    """One ``InferenceClient`` method: the Hub's name for its task and what is priced."""

    #: The Hub's task id (``"feature-extraction"``): names the call in records and messages.
    name: str
    #: The parameters whose text is priced as input tokens; empty for a media task.
    texts: tuple[str, ...] = ()
    #: The attribute of the answer holding generated text, priced as output tokens (summaries, translations).
    output: str | None = None

    @property
    def media(self) -> bool:
        """Whether the task is priced per call only."""
        return not self.texts


def _token(name: str, *texts: str, output: str | None = None) -> Task:
    return Task(name, texts, output)


#: Every task method of ``InferenceClient`` and ``AsyncInferenceClient`` besides ``chat_completion`` and
#: ``text_generation`` (which the adapter counts precisely), by method name.
TASKS: Mapping[str, Task] = {
    # token tasks
    "feature_extraction": _token("feature-extraction", "text"),
    "sentence_similarity": _token("sentence-similarity", "sentence", "other_sentences"),
    "summarization": _token("summarization", "text", output="summary_text"),
    "translation": _token("translation", "text", output="translation_text"),
    "text_classification": _token("text-classification", "text"),
    "token_classification": _token("token-classification", "text"),
    "fill_mask": _token("fill-mask", "text"),
    "question_answering": _token("question-answering", "question", "context"),
    "zero_shot_classification": _token("zero-shot-classification", "text", "candidate_labels"),
    "table_question_answering": _token("table-question-answering", "query", "table"),
    # media tasks
    "audio_classification": Task("audio-classification"),
    "audio_to_audio": Task("audio-to-audio"),
    "automatic_speech_recognition": Task("automatic-speech-recognition"),
    "document_question_answering": Task("document-question-answering"),
    "image_classification": Task("image-classification"),
    "image_segmentation": Task("image-segmentation"),
    "image_to_image": Task("image-to-image"),
    "image_to_text": Task("image-to-text"),
    "image_to_video": Task("image-to-video"),
    "object_detection": Task("object-detection"),
    "tabular_classification": Task("tabular-classification"),
    "tabular_regression": Task("tabular-regression"),
    "text_to_image": Task("text-to-image"),
    "text_to_speech": Task("text-to-speech"),
    "text_to_video": Task("text-to-video"),
    "visual_question_answering": Task("visual-question-answering"),
    "zero_shot_image_classification": Task("zero-shot-image-classification"),
}

#: Output tokens reserved for a summary or translation when the caller sets no limit: shekel does not send
#: one (it would change the answer), so the estimate of what comes back is capped here.
DEFAULT_MAX_OUTPUT_TOKENS = 1024


def _texts(value: object) -> list[str]:
    """The text in a task argument: a string, a list of strings, a table's column names and cells."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [item for item in value if isinstance(item, str)]
    if isinstance(value, Mapping):
        texts = [key for key in value if isinstance(key, str)]
        for column in value.values():
            texts.extend(_texts(column))
        return texts
    return []


def _output_limit(kwargs: Mapping[str, Any]) -> int | None:
    """The caller's own limit on a summary or translation (``generate_parameters``), if any."""
    parameters = kwargs.get("generate_parameters")
    if not isinstance(parameters, Mapping):
        return None
    for key in ("max_new_tokens", "max_length"):
        value = parameters.get(key)
        if type(value) is int and value > 0:
            return value
    return None


class TaskCall(CallAccounting):
    """A task call in flight; its answer is read only for the text a summary or translation generated."""

    __slots__ = ("limit_sent", "media", "output_attr")
    #: The media task's name (priced per call only), or None; the answer's attribute with generated text.
    media: str | None
    output_attr: str | None
    #: Whether the output limit reserved for was the caller's own, sent to the server (shekel's default
    #: is reserved for but never sent: it would change the answer).
    limit_sent: bool

    def output_allowed(self) -> int | None:
        """An estimate is capped by the limit only when the server was given it."""
        return self.reservation.max_tokens if self.limit_sent else None

    def start(self, reservation: Reservation, kwargs: dict[str, Any], observer: Any) -> None:
        """Send what was reserved for: the fallback model, when one took over."""
        self.reservation = reservation
        if observer is not None:
            observer(self)
        if reservation.fallback_from is not None:
            kwargs["model"] = reservation.model

    def observe(self, chunk: Any) -> Any:
        """Tasks other than chat and text generation do not stream: nothing to observe."""
        return chunk

    def settle(self, response: Any) -> Any:
        if self.output_attr is not None:
            try:
                self.saw_output(getattr(response, self.output_attr, None))
            except Exception:
                self.unreadable = True
        elif self.media is not None:
            self.saw_usage(Usage(0, 0))  # priced per call: no tokens to estimate
        self.finish()
        return response


Binder = Callable[..., inspect.BoundArguments]


def planner(
    task: Task, original: Callable[..., Any], target_of: Callable[[Any, dict[str, Any]], tuple[Any, Any]]
) -> Callable[[Budget, Any, tuple[Any, ...], dict[str, Any]], TaskCall]:
    """The adapter's ``plan`` function for ``task``, whose method is ``original``. ``target_of`` gives the
    model id to record and the provider to price for (the adapter's ``_target``)."""
    signature = inspect.signature(original)

    def plan(budget: Budget, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskCall:
        model, provider = target_of(client, kwargs)
        prompt_high = prompt_fair = 0
        if task.texts:
            try:
                bound = signature.bind(client, *args, **kwargs).arguments
            except TypeError:  # the method itself will say what is wrong, without anything held
                bound = {}
            for name in task.texts:
                for text in _texts(bound.get(name)):
                    high, fair = text_prompt_estimates(model, text)
                    if budget._chain_fallback:
                        fallback = budget._any_fallback()
                        if fallback is not None and fallback != model:
                            high = max(high, text_prompt_estimates(fallback, text)[0])
                    prompt_high += high
                    prompt_fair += fair
        max_output = 0
        own_limit = None
        if task.output is not None:
            own_limit = _output_limit(kwargs)
            max_output = own_limit or DEFAULT_MAX_OUTPUT_TOKENS
        call = TaskCall(
            (model, prompt_high, max_output, max_output, provider),
            prompt_fair=prompt_fair,
            source=f"huggingface_hub.{task.name}",
            streamed=False,
            model_label=model,
        )
        call.output_attr = task.output
        call.media = task.name if task.media else None
        call.limit_sent = own_limit is not None
        return call

    return plan

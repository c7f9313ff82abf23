"""Pairwise judges: given two completions per prompt, say which one is preferred (or neither). `get_judge` builds one
by name, for the CLI's `--judge`."""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)
from trl.data_utils import is_conversational

from .audio_utils import load_audio
from .generation import accepts_logits_to_keep
from .modeling import init_model
from .prompt_inputs import (
    process_prompts,
    processor_sampling_rate,
    render_prompts,
    to_model_inputs,
    tokenizer_of,
    without_audio_parts,
)
from .rewards import reward_model_texts, wer_reward
from .text import normalizer


logger = logging.getLogger(__name__)

# The answer labels of the comparison prompts: the first answer shown is "A".
LABELS = ("A", "B")

# The comparison prompt of the LLM judges. `{context}` is empty or ends with a newline (see `comparison_texts`).
DEFAULT_TEMPLATE = (
    "Compare two answers to a user's request about an audio clip. For a transcription request, the better answer is "
    "the more accurate transcript.\n\n"
    "Request: {request}\n"
    "{context}"
    "Answer A: {answer_a}\n"
    "Answer B: {answer_b}\n\n"
    "Which answer is better? Answer A or B."
)

# The system message of `OpenAIJudge`, whose answer is read as text, not from log-probabilities.
DEFAULT_SYSTEM_PROMPT = "You are a careful judge. Reply with exactly one letter: A or B."


class PairwiseJudge(Protocol):
    """What `AudioOnlineDPOTrainer(judge=...)` calls.

    `judge(prompts, completions_a, completions_b, **columns)` gets one prompt and two completion texts per row, plus
    the dataset's other columns (`text`, `keywords`, ...), one value per prompt. It returns, per prompt, `0` when
    completion a is preferred, `1` when b is, or `None` when it has no preference (the pair then carries no loss).
    """

    def __call__(
        self, prompts: list[Any], completions_a: list[str], completions_b: list[str], **columns: Any
    ) -> list[int | None]: ...


def preference(probability: float | None, margin: float = 0.0) -> int | None:
    """0 (a preferred) or 1 (b preferred) from the probability that a is the better answer; None when it is unknown,
    exactly 0.5, or within `margin` of 0.5."""
    if probability is None or probability == 0.5 or abs(probability - 0.5) < margin:
        return None
    return 0 if probability > 0.5 else 1


class RewardFunctionJudge:
    """Prefers the completion a reward function scores higher; equal scores, or a None score on either side (the
    function has nothing to say about that row), give no preference.

    `reward_func` has TRL's reward-function signature: `reward_func(prompts=..., completions=..., **columns)`
    returning one float (or None) per completion.
    """

    def __init__(self, reward_func: Callable[..., list[float | None]]):
        self.reward_func = reward_func

    def __call__(
        self, prompts: list[Any], completions_a: list[str], completions_b: list[str], **columns: Any
    ) -> list[int | None]:
        scores_a = self.reward_func(prompts=prompts, completions=completions_a, **columns)
        scores_b = self.reward_func(prompts=prompts, completions=completions_b, **columns)
        return [
            None if a is None or b is None else 0 if a > b else 1 if b > a else None
            for a, b in zip(scores_a, scores_b)
        ]


class ReferenceJudge(RewardFunctionJudge):
    """Prefers the completion with the lower word error rate against the row's reference transcript, the `text`
    column (`rewards.wer_reward` under `normalization`, `"whisper"` or `"simple"`). Equal WERs, or a row whose `text`
    is None, give no preference. An empty reference is a reference (a clip without speech): the empty completion
    wins. A dataset without a `text` column is an error, not a run without preferences.
    """

    def __init__(self, normalization: str = "whisper"):
        normalizer(normalization)  # raises on an unknown one before any training
        super().__init__(functools.partial(wer_reward, normalization=normalization))

    def __call__(
        self, prompts: list[Any], completions_a: list[str], completions_b: list[str], **columns: Any
    ) -> list[int | None]:
        if columns.get("text") is None:
            raise ValueError(
                "ReferenceJudge compares the completions with the reference transcript of the dataset's `text` "
                "column, which this dataset lacks: add one, or pick another judge."
            )
        return super().__call__(prompts, completions_a, completions_b, **columns)


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """No gradients and no dropout for the block; the model's train/eval mode is given back (the judge may be the
    policy itself, or share its weights)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class RewardModelJudge:
    """Prefers the completion a sequence-classification reward model scores higher (its first logit); equal scores
    give no preference.

    The reward model reads text only, as the trainer gives it to reward models in `reward_funcs`: the prompt without
    its audio parts followed by the completion as the assistant's turn, through the tokenizer's chat template
    (conversational prompts), or prompt + completion (text prompts); right-padded, never truncated.

    Args:
        model (`str` or `PreTrainedModel`):
            The reward model, or its hub id / local path (the CLI's `--reward_model_path`), loaded with
            `AutoModelForSequenceClassification.from_pretrained(model, **model_kwargs)` and `AutoTokenizer`.
        tokenizer (*optional*):
            The reward model's tokenizer; required with a model object. Without a pad token it pads with eos.
        batch_size (`int`, *optional*, defaults to `16`):
            Texts scored per forward pass.
        model_kwargs (`dict`, *optional*):
            Keyword arguments of `from_pretrained` (`dtype`, `device_map`, ...) when `model` is a path.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        tokenizer: Any = None,
        batch_size: int = 16,
        model_kwargs: dict[str, Any] | None = None,
    ):
        if isinstance(model, str):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForSequenceClassification.from_pretrained(model, **(model_kwargs or {}))
        elif tokenizer is None:
            raise ValueError("RewardModelJudge needs the reward model's tokenizer with a model object.")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:  # sequence classifiers score the last token that is not padding
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def __call__(
        self, prompts: list[Any], completions_a: list[str], completions_b: list[str], **columns: Any
    ) -> list[int | None]:
        scores = self.scores(prompts + prompts, completions_a + completions_b).view(2, len(prompts))
        return [0 if a > b else 1 if b > a else None for a, b in scores.T.tolist()]

    def scores(self, prompts: list[Any], completions: list[str]) -> torch.Tensor:
        """The reward model's score of each prompt + completion, as a float32 tensor on the CPU."""
        texts = reward_model_texts(prompts, completions, self.tokenizer)
        scores = []
        with _evaluating(self.model):
            for start in range(0, len(texts), self.batch_size):
                inputs = self.tokenizer(
                    text=texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    padding_side="right",
                    add_special_tokens=False,
                ).to(self.model.device)
                scores.append(self.model(**inputs).logits[:, 0].float().cpu())
        return torch.cat(scores)


def _request_text(prompt: Any) -> str:
    """What the user asked: the text of the prompt's last user message, without its audio parts (a text prompt as it
    is)."""
    if not is_conversational({"prompt": prompt}):
        return prompt
    return [message["content"] for message in without_audio_parts(prompt) if message["role"] == "user"][-1]


def _context_text(reference: str | None, keywords: list[str] | None) -> str:
    """A row's reference transcript and keywords, where present, one line each."""
    lines = [] if reference is None else [f"Reference transcript: {reference}"]
    if keywords:
        lines.append(f"Keywords: {', '.join(keywords)}")
    return "".join(line + "\n" for line in lines)


def comparison_texts(
    template: str,
    prompts: list[Any],
    completions_a: list[str],
    completions_b: list[str],
    columns: dict[str, list],
    use_reference: bool = True,
    both_orders: bool = True,
) -> list[str]:
    """The comparison questions of a batch: `template` filled with each row's request, context (with
    `use_reference`: its reference transcript and keywords, where present) and two answers, first a then b for every
    row, then (with `both_orders`) b then a for every row."""
    requests = [_request_text(prompt) for prompt in prompts]
    no_values = [None] * len(prompts)
    contexts = [
        _context_text(reference, keywords) if use_reference else ""
        for reference, keywords in zip(columns.get("text") or no_values, columns.get("keywords") or no_values)
    ]
    orders = [(completions_a, completions_b)] + ([(completions_b, completions_a)] if both_orders else [])
    return [
        template.format(request=request, context=context, answer_a=first, answer_b=second)
        for shown_first, shown_second in orders
        for request, context, first, second in zip(requests, contexts, shown_first, shown_second)
    ]


def win_probabilities(first_label: list[float | None], num_rows: int) -> list[float | None]:
    """P(a is better) per row, from P("A") of each question of `comparison_texts` (None: no answer): the mean of
    P("A" | a, b) and, when both orders were asked, P("B" | b, a) = 1 - P("A" | b, a), which cancels a judge's
    preference for a position. None for a row with an unanswered question."""
    orders = [first_label[start : start + num_rows] for start in range(0, len(first_label), num_rows)]
    probabilities = []
    for row in range(num_rows):
        votes = [order[row] for order in orders]
        if None in votes:
            probabilities.append(None)
        else:
            probabilities.append(sum([votes[0]] + [1 - vote for vote in votes[1:]]) / len(votes))
    return probabilities


def _label_token_ids(tokenizer: Any) -> list[int]:
    ids = [tokenizer.encode(label, add_special_tokens=False) for label in LABELS]
    if any(len(label_ids) != 1 for label_ids in ids) or ids[0] == ids[1]:
        raise ValueError(
            f"The LLM judges read their answer from the log-probabilities of the tokens {LABELS}, but this tokenizer "
            f"encodes them as {ids}: each must be one token of its own."
        )
    return [label_ids[0] for label_ids in ids]


class LLMJudge:
    """Asks a causal LM which of two answers is better, and reads its choice from the log-probabilities of the tokens
    "A" and "B" at the answer position (no text is generated or parsed).

    The question (`template`: an instruction, the user's request without its audio, the row's reference transcript
    and keywords where present, answer A, answer B, "Which answer is better? Answer A or B.") is one user message
    through the chat template (the raw text when the tokenizer has none), asked with a then b, and (`both_orders`)
    with b then a, to cancel the judge's preference for a position (as AlpacaEval and PairPM do):

        p(a better) = mean(P("A" | a, b), P("B" | b, a)), each P normalized over the two tokens

    and a is preferred when p >= 0.5 + `margin`, b when p <= 0.5 - `margin`; in between there is no preference. The
    rows' questions run in batches (left-padded, with position ids that skip the padding, so a row's answer does not
    depend on its batch).

    Args:
        model (`str` or `PreTrainedModel`):
            The judge, or its hub id / local path, loaded with `AutoModelForCausalLM.from_pretrained(model,
            **model_kwargs)` and `AutoTokenizer`.
        processing_class (*optional*):
            Its tokenizer (or processor); required with a model object. "A" and "B" must be single tokens.
        template (`str`, *optional*, defaults to `DEFAULT_TEMPLATE`):
            The question, with the fields `{request}`, `{context}`, `{answer_a}` and `{answer_b}`.
        margin (`float`, *optional*, defaults to `0.05`):
            How far from 0.5 p(a better) must be for a preference.
        both_orders (`bool`, *optional*, defaults to `True`):
            Ask with the answers in both orders (twice the cost); otherwise a then b only.
        use_reference (`bool`, *optional*, defaults to `True`):
            Show the judge the row's reference transcript (`text`) and `keywords`, where present.
        batch_size (`int`, *optional*, defaults to `8`):
            Questions per forward pass (a row asks one per order).
        model_kwargs (`dict`, *optional*):
            Keyword arguments of the loader when `model` is a path (`dtype`, `device_map`, ...).
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        processing_class: Any = None,
        template: str = DEFAULT_TEMPLATE,
        margin: float = 0.05,
        both_orders: bool = True,
        use_reference: bool = True,
        batch_size: int = 8,
        model_kwargs: dict[str, Any] | None = None,
    ):
        if isinstance(model, str):
            loaded, processor = self._load(model, model_kwargs or {})
            model, processing_class = loaded, processing_class or processor
        elif processing_class is None:
            raise ValueError(f"{type(self).__name__} needs the judge's tokenizer or processor with a model object.")
        self.model, self.processing_class = model, processing_class
        self.label_ids = _label_token_ids(tokenizer_of(processing_class))
        self.template, self.margin, self.both_orders = template, margin, both_orders
        self.use_reference, self.batch_size = use_reference, batch_size

    @staticmethod
    def _load(path: str, model_kwargs: dict[str, Any]) -> tuple[PreTrainedModel, Any]:
        return AutoModelForCausalLM.from_pretrained(path, **model_kwargs), AutoTokenizer.from_pretrained(path)

    def __call__(
        self, prompts: list[Any], completions_a: list[str], completions_b: list[str], **columns: Any
    ) -> list[int | None]:
        probabilities = self.win_probabilities(prompts, completions_a, completions_b, **columns)
        return [preference(p, self.margin) for p in probabilities]

    def win_probabilities(
        self, prompts: list[Any], completions_a: list[str], completions_b: list[str], **columns: Any
    ) -> list[float]:
        """p(a better) per row (see the class docstring)."""
        logprobs = self.answer_logprobs(prompts, completions_a, completions_b, **columns)
        first_label = logprobs.softmax(-1)[..., 0].T.flatten()  # P("A") normalized over the two labels, order-major
        return win_probabilities(first_label.tolist(), len(prompts))

    def answer_logprobs(
        self, prompts: list[Any], completions_a: list[str], completions_b: list[str], **columns: Any
    ) -> torch.Tensor:
        """log P("A") and log P("B") over the whole vocabulary at the answer position, shape (rows, orders, 2): order
        0 shows a then b, order 1 (`both_orders`) b then a."""
        questions = comparison_texts(
            self.template, prompts, completions_a, completions_b, columns, self.use_reference, self.both_orders
        )
        clips = self._clips(columns, len(prompts))
        rows = [index % len(prompts) for index in range(len(questions))]
        logprobs = torch.cat(
            [
                self._label_logprobs(
                    questions[start : start + self.batch_size],
                    [clips[row] for row in rows[start : start + self.batch_size]],
                )
                for start in range(0, len(questions), self.batch_size)
            ]
        )
        return logprobs.view(len(questions) // len(prompts), len(prompts), 2).transpose(0, 1)

    def _clips(self, columns: dict[str, list], num_rows: int) -> list[np.ndarray | None]:
        """Each row's clip for the judge to hear: none for a text LLM."""
        return [None] * num_rows

    def _label_logprobs(self, questions: list[str], clips: list[np.ndarray | None]) -> torch.Tensor:
        # A row with a clip gets an audio part in front of its question (`normalize_prompt`).
        has_template = self.processing_class.chat_template is not None
        prompts = [[{"role": "user", "content": q}] if has_template else q for q in questions]
        texts = render_prompts(self.processing_class, {"prompt": prompts, "audio": clips})
        inputs = to_model_inputs(self.model, process_prompts(self.processing_class, texts, clips))
        position_ids = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        logits_to_keep = {"logits_to_keep": 1} if accepts_logits_to_keep(self.model) else {}
        with _evaluating(self.model):
            logits = self.model(**inputs, position_ids=position_ids, use_cache=False, **logits_to_keep).logits
        return logits[:, -1].float().log_softmax(-1)[:, self.label_ids].cpu()


class AudioLLMJudge(LLMJudge):
    """`LLMJudge` with an audio LLM (Phi-4-multimodal, Qwen2-Audio, GLM-ASR, ...: the policy's family, or the policy's
    reference) that hears the clip: each question is one user message holding the row's audio part and then the
    text of `LLMJudge` (request, reference context where present, the two answers), rendered and processed by
    `prompt_inputs` like the trainer's prompts, so every family works the same way. Same aggregation, margin and
    orders as `LLMJudge`.

    A row without audio is asked the same question without a clip (text only), in the same batch.

    Takes `LLMJudge`'s arguments, except that:
        model (`str` or `PreTrainedModel`):
            A path loads with `modeling.init_model(model, **model_kwargs)` (Phi-4-MM's speech adapter merged by
            default; pass `model_kwargs={"speech_lora": "off"}` for families without one).
        processing_class:
            The judge's processor (with its audio feature extractor), required with a model object.
        audio_sampling_rate (`int`, *optional*):
            The rate of the waveforms in the `audio` column (the trainer decodes them at the policy processor's rate);
            resampled to the judge processor's rate when they differ. Defaults to the judge processor's rate. Paths
            and `datasets` audio dicts in the column are decoded at the judge's rate.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        processing_class: Any = None,
        audio_sampling_rate: int | None = None,
        **options: Any,
    ):
        super().__init__(model, processing_class, **options)
        self.sampling_rate = processor_sampling_rate(self.processing_class)
        if self.sampling_rate is None:
            raise ValueError("AudioLLMJudge needs the judge's processor (with its audio feature extractor).")
        self.audio_sampling_rate = audio_sampling_rate or self.sampling_rate

    @staticmethod
    def _load(path: str, model_kwargs: dict[str, Any]) -> tuple[PreTrainedModel, Any]:
        return init_model(path, **model_kwargs)

    def _clips(self, columns: dict[str, list], num_rows: int) -> list[np.ndarray | None]:
        sources = columns.get("audio") or [None] * num_rows
        return [
            None
            if source is None
            else load_audio(
                {"array": source, "sampling_rate": self.audio_sampling_rate}
                if isinstance(source, np.ndarray)
                else source,
                self.sampling_rate,
            )
            for source in sources
        ]


class OpenAIJudge:
    """Asks a chat model behind any OpenAI-compatible endpoint (OpenAI, vLLM, TGI, ...) which of two answers is
    better, through the official `openai` client.

    The question is `LLMJudge`'s (text only: the endpoint does not hear the clip) after a system message asking for
    one letter, asked with a then b and (`both_orders`) b then a; the reply must be exactly "A" or "B" (surrounding
    whitespace aside). Each answered order is a vote, aggregated as in `LLMJudge` with P("A") = 1 or 0: both orders
    agreeing give a preference, disagreeing ones (position bias) give none.

    A malformed reply, or a request that still fails after the client's retries (it retries timeouts, connection
    errors, 408, 409, 429 and 5xx, with exponential backoff from 0.5 s to 8 s, or the server's `Retry-After`), gives
    its row no preference and is counted in `failures`, with a warning per call that names the error's type and
    status, never its text (a server may echo credentials). A 401 or 404 (bad key, model or URL) raises: every
    later request would fail the same way. The API key is read from the environment variable named `api_key_env` and
    kept by the client only: it is never logged nor part of `repr(judge)` or of an error message.

    Args:
        model (`str`): The model name the endpoint serves.
        base_url (`str`, *optional*): The endpoint, e.g. `http://localhost:8000/v1`; the client's default (OpenAI's
            API, or `OPENAI_BASE_URL`) when None.
        api_key_env (`str`, *optional*, defaults to `"OPENAI_API_KEY"`): The NAME of the environment variable that
            holds the key (any non-empty value for a server without authentication).
        template (`str`, *optional*, defaults to `DEFAULT_TEMPLATE`): As in `LLMJudge`.
        system_prompt (`str`, *optional*, defaults to `DEFAULT_SYSTEM_PROMPT`): The system message.
        both_orders (`bool`, *optional*, defaults to `True`): As in `LLMJudge`.
        use_reference (`bool`, *optional*, defaults to `True`): As in `LLMJudge`.
        timeout (`float`, *optional*, defaults to `30.0`): Seconds per request attempt.
        max_retries (`int`, *optional*, defaults to `3`): Retries per request after the first attempt.
        max_concurrency (`int`, *optional*, defaults to `8`): Requests in flight at once (a thread pool).
        max_tokens (`int`, *optional*, defaults to `1`): The reply's token limit (None: the endpoint's).
        temperature (`float`, *optional*, defaults to `0.0`): Sampling temperature.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        template: str = DEFAULT_TEMPLATE,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        both_orders: bool = True,
        use_reference: bool = True,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_concurrency: int = 8,
        max_tokens: int | None = 1,
        temperature: float = 0.0,
    ):
        import openai  # here, not above: a second of import time that only this judge needs

        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(
                f"OpenAIJudge reads its API key from the environment variable {api_key_env}, which is not set (any "
                "non-empty value will do for a server without authentication)."
            )
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.template, self.system_prompt = template, system_prompt
        self.both_orders, self.use_reference = both_orders, use_reference
        self.max_concurrency, self.max_tokens, self.temperature = max_concurrency, max_tokens, temperature
        self.failures = 0  # questions without an answer (malformed reply, or a request failed after its retries)

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def __call__(
        self, prompts: list[Any], completions_a: list[str], completions_b: list[str], **columns: Any
    ) -> list[int | None]:
        return [preference(p) for p in self.win_probabilities(prompts, completions_a, completions_b, **columns)]

    def win_probabilities(
        self, prompts: list[Any], completions_a: list[str], completions_b: list[str], **columns: Any
    ) -> list[float | None]:
        """p(a better) per row: 1, 0.5 or 0 with both orders answered; None when a question went unanswered."""
        questions = comparison_texts(
            self.template, prompts, completions_a, completions_b, columns, self.use_reference, self.both_orders
        )
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            replies = list(pool.map(self._ask, questions))
        errors = Counter(error for _, error in replies if error is not None)
        if errors:
            self.failures += errors.total()
            logger.warning(
                "OpenAIJudge: %d of %d questions got no answer (%s); their rows have no preference (%d failures so "
                "far).",
                errors.total(),
                len(questions),
                ", ".join(f"{count}x {error}" for error, count in errors.items()),
                self.failures,
            )
        first_label = [None if label is None else float(label == LABELS[0]) for label, _ in replies]
        return win_probabilities(first_label, len(prompts))

    def _ask(self, question: str) -> tuple[str | None, str | None]:
        """The label the endpoint answers, or None and why not."""
        import openai

        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": question}]
        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=self.temperature
            )
        except (openai.AuthenticationError, openai.NotFoundError) as e:
            # `from None`, and not the server's text: an authentication error may quote the key.
            raise RuntimeError(
                f"OpenAIJudge: {self.base_url or 'the endpoint'} answered {e.status_code} ({type(e).__name__}): check "
                f"the model name ({self.model!r}), the base URL and the key in {self.api_key_env}."
            ) from None
        except openai.APIStatusError as e:
            return None, f"{type(e).__name__} {e.status_code}"
        except openai.APIError as e:  # timeouts, connection errors
            return None, type(e).__name__
        reply = (response.choices[0].message.content or "").strip() if response.choices else ""
        if reply not in LABELS:
            return None, f"malformed answer {reply[:20]!r}"
        return reply, None


# The judges `get_judge` (and the CLI's --judge) builds, by name.
_JUDGE_CLASSES = {
    "reference": ReferenceJudge,
    "reward_model": RewardModelJudge,
    "llm": LLMJudge,
    "audio_llm": AudioLLMJudge,
    "openai": OpenAIJudge,
}
JUDGES = tuple(_JUDGE_CLASSES)


def get_judge(name: str, **options: Any) -> PairwiseJudge:
    """The judge called `name` (one of `JUDGES`, the CLI's `--judge`), built with `options`, its class's arguments:

    - `"reference"`: `ReferenceJudge(normalization="whisper")`: lower WER against the `text` column wins.
    - `"reward_model"`: `RewardModelJudge(model, tokenizer=None, batch_size=16, model_kwargs=None)`: `model` is the
      reward model's path (`--reward_model_path`) or object; higher score wins.
    - `"llm"`: `LLMJudge(model, processing_class=None, template=DEFAULT_TEMPLATE, margin=0.05, both_orders=True,
      use_reference=True, batch_size=8, model_kwargs=None)`: a local causal LM's log-probabilities of "A"/"B".
    - `"audio_llm"`: `AudioLLMJudge(model, processing_class=None, audio_sampling_rate=None, **options)`, with
      `LLMJudge`'s options: the same with an audio LLM that hears the clip (a path loads with `init_model`).
    - `"openai"`: `OpenAIJudge(model, base_url=None, api_key_env="OPENAI_API_KEY", template=DEFAULT_TEMPLATE,
      system_prompt=DEFAULT_SYSTEM_PROMPT, both_orders=True, use_reference=True, timeout=30.0, max_retries=3,
      max_concurrency=8, max_tokens=1, temperature=0.0)`: an OpenAI-compatible chat endpoint's "A"/"B" reply.

    See each class for what the options mean (`judge_options(cls)` lists them). Raises, with a did-you-mean, on an
    unknown name or option.
    """
    if name not in _JUDGE_CLASSES:
        close = difflib.get_close_matches(name, JUDGES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown judge {name!r}: expected one of {JUDGES}.{hint}")
    judge_class = _JUDGE_CLASSES[name]
    accepted = judge_options(judge_class)
    unknown = [option for option in options if option not in accepted]
    if unknown:
        close = [difflib.get_close_matches(option, accepted, n=1) for option in unknown]
        hints = "".join(f" Did you mean {c[0]!r} for {o!r}?" for o, c in zip(unknown, close) if c)
        raise ValueError(f"Judge {name!r} takes the options {accepted}, not {unknown}.{hints}")
    return judge_class(**options)


def judge_options(judge_class: type) -> list[str]:
    """The keyword arguments `judge_class` takes, with those its `**options` hands on to its base class
    (`AudioLLMJudge` -> `LLMJudge`)."""
    names = []
    for cls in judge_class.__mro__:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
        names += [p.name for p in parameters if p.kind is not p.VAR_KEYWORD and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return names

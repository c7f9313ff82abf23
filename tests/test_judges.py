"""Pairwise judges (`trl_audio.judges`): literal completions, tiny models whose answers the test forces, a local
chat-completions server, and 3 training steps with each judge."""

import contextlib
import json
import logging
import math
import re
import threading
import time
import traceback
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import random_reward_model
from transformers import AutoTokenizer

from trl_audio import AudioOnlineDPOConfig, AudioOnlineDPOTrainer
from trl_audio.audio_utils import load_audio
from trl_audio.judges import (
    JUDGES,
    AudioLLMJudge,
    LLMJudge,
    OpenAIJudge,
    ReferenceJudge,
    RewardFunctionJudge,
    RewardModelJudge,
    get_judge,
    preference,
)
from trl_audio.rewards import bias_word_recall_reward, wer_reward
from trl_audio.testing import load_tiny


SAMPLE = Path(__file__).resolve().parents[1] / "examples/data/speech_sample"
META = [json.loads(line) for line in (SAMPLE / "metadata.jsonl").read_text().splitlines()]
PROMPT = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe the audio clip."}]}]
GOOD, BAD, OTHER = "ada lovelace wrote notes", "a the love lace", "grace hopper found a moth"
SECRET = "sk-test-SECRET-4f1d9c"
KEY_ENV = "TRL_AUDIO_TEST_JUDGE_KEY"


def clip(index):
    return load_audio(str(SAMPLE / META[index]["audio_path"]), 16000)


def test_reward_function_judge_prefers_higher_reward_and_abstains_on_ties():
    judge = RewardFunctionJudge(wer_reward)
    preferences = judge(
        ["p1", "p2", "p3"], ["ada lovelace", "x", "same"], ["ada", "ada lovelace", "same"], text=["Ada Lovelace"] * 3
    )
    assert preferences == [0, 1, None]
    assert not math.isnan(wer_reward(["a"], text=["a"])[0])


def test_reward_function_judge_abstains_where_the_reward_is_none():
    judge = RewardFunctionJudge(bias_word_recall_reward)
    preferences = judge(["p1", "p2"], ["Ada Lovelace", "Ada"], ["Ada", "x"], keywords=[["Ada Lovelace"], []])
    assert preferences == [0, None]  # row 2 has no keywords: the reward is None for both


def test_reference_judge_prefers_the_lower_wer():
    reference = "Ada Lovelace wrote notes."
    cases = [  # (a, b, reference, expected)
        ("ada lovelace wrote notes", "ada lovelace wrote", reference, 0),  # WER 0 vs 1/4
        ("ada wrote", "Ada Lovelace wrote notes", reference, 1),  # 2/4 vs 0
        ("ada lovelace wrote nodes", "ada lovelace wrote boats", reference, None),  # 1/4 each: a tie
        ("Ada Lovelace, wrote notes!", "ada lovelace wrote notes", reference, None),  # equal after normalization
        ("ada lovelace wrote notes", "x", None, None),  # no reference
        ("", "hello", "", 0),  # an empty reference is a reference: the empty transcript is right
    ]
    a, b, text, expected = (list(column) for column in zip(*cases))
    assert ReferenceJudge()([PROMPT] * len(cases), a, b, text=text, id=list(range(len(cases)))) == expected
    with pytest.raises(ValueError, match="`text` column"):
        ReferenceJudge()([PROMPT], ["a"], ["b"], id=["no-text"])
    # Whisper's normalization spells numbers as digits, the simple one keeps them as written.
    assert ReferenceJudge()([PROMPT], ["2 cats"], ["two cats"], text=["Two cats."]) == [None]
    assert get_judge("reference", normalization="simple")([PROMPT], ["2 cats"], ["two cats"], text=["Two cats."]) == [
        1
    ]
    with pytest.raises(ValueError, match="Unknown normalization"):
        ReferenceJudge(normalization="whisperr")


def test_preference_thresholds_the_probability_that_a_wins():
    probabilities = (0.56, 0.54, 0.5, 0.46, 0.44, 0.2, None)
    assert [preference(p, margin=0.05) for p in probabilities] == [0, None, None, None, 1, 1, None]
    assert preference(0.5, margin=0.0) is None and preference(0.5001) == 0


@contextlib.contextmanager
def recorded_prompts(model, tokenizer):
    """The decoded input rows of each forward pass of `model`, one list per pass."""
    passes = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append(tokenizer.batch_decode(kwargs["input_ids"])), with_kwargs=True
    )
    try:
        yield passes
    finally:
        handle.remove()


# A sequence classifier that scores the last token of the text only: its one layer adds nothing (zero output
# projections), so the last position's state is that token's embedding, here zero but for the tokens given a score.
# RMSNorm makes an embedding of s * ones into sign(s) * ones, which the score head (weights 1/hidden) maps to sign(s).
def tiny_reward_model(tokenizer, token_scores):
    model = random_reward_model(tokenizer, hidden_size=8)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        for token, score in token_scores.items():
            model.model.embed_tokens.weight[token] = score
        model.score.weight.fill_(1 / model.config.hidden_size)
    return model


@pytest.fixture
def reward_model_and_tokenizer(tiny_phi4mm_dir):
    """A tiny reward model that scores the text "Transcribe the audio clip." + `GOOD` 1, + `BAD` -1, + `OTHER` 0 (a
    chat template that joins the messages' text, so the completion's last token ends the text)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_phi4mm_dir)
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    last = {c: tokenizer("Transcribe the audio clip." + c)["input_ids"][-1] for c in (GOOD, BAD, OTHER)}
    assert len(set(last.values())) == 3
    return tiny_reward_model(tokenizer, {last[GOOD]: 1.0, last[BAD]: -1.0}), tokenizer


def test_reward_model_judge_prefers_the_higher_score_of_the_text_without_audio(reward_model_and_tokenizer, tmp_path):
    model, tokenizer = reward_model_and_tokenizer
    judge = RewardModelJudge(model, tokenizer, batch_size=4)
    with recorded_prompts(model, tokenizer) as passes:
        assert judge.scores([PROMPT] * 3, [GOOD, BAD, OTHER]).tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-5)
    # The reward model reads the prompt without its audio part, then the completion.
    assert [text.replace("<|endoftext|>", "") for text in passes[0]] == [
        f"Transcribe the audio clip.{c}" for c in (GOOD, BAD, OTHER)
    ]
    assert judge([PROMPT] * 4, [GOOD, BAD, OTHER, BAD], [BAD, OTHER, OTHER, BAD]) == [0, 1, None, None]
    assert judge(["Say: "] * 2, [GOOD, BAD], [OTHER, GOOD]) == [0, 1]  # text prompts: prompt + completion

    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    from_path = get_judge("reward_model", model=str(tmp_path / "rm"))
    assert torch.equal(
        from_path.scores([PROMPT] * 3, [GOOD, BAD, OTHER]), judge.scores([PROMPT] * 3, [GOOD, BAD, OTHER])
    )


def label_id(tokenizer, label):
    return tokenizer.encode(label, add_special_tokens=False)[0]


@contextlib.contextmanager
def oracle(model, tokenizer, good):
    """Makes `model` answer "A" where answer A is `good`, else "B", by adding 30 to that token's logit for each
    input row (a forward hook on the output layer), whatever the model would have said."""
    passes = []

    def record(module, args, kwargs):
        passes.append(tokenizer.batch_decode(kwargs["input_ids"]))

    def force(module, args, logits):
        logits = logits.clone()
        for row, text in enumerate(passes[-1]):
            logits[row, :, label_id(tokenizer, "A" if f"Answer A: {good}\n" in text else "B")] += 30.0
        return logits

    handles = [
        model.register_forward_pre_hook(record, with_kwargs=True),
        model.get_output_embeddings().register_forward_hook(force),
    ]
    try:
        yield passes
    finally:
        for handle in handles:
            handle.remove()


def bias_towards_a(model, tokenizer):
    """Gives the output layer a bias of 30 on the token "A": a judge that always answers "A"."""
    output_layer = model.get_output_embeddings()
    output_layer.bias = torch.nn.Parameter(torch.zeros(output_layer.out_features))
    with torch.no_grad():
        output_layer.bias[label_id(tokenizer, "A")] = 30.0


def assert_both_orders(prompts, a, b):
    for first, second in zip(a, b):
        assert any(f"Answer A: {first}\nAnswer B: {second}\n" in p for p in prompts)
        assert any(f"Answer A: {second}\nAnswer B: {first}\n" in p for p in prompts)


def test_llm_judge_asks_both_orders_and_reads_the_answer_tokens(tiny_phi4mm_dir):
    model, processor = load_tiny(tiny_phi4mm_dir)
    judge = LLMJudge(model, processor.tokenizer)
    a, b = [GOOD, BAD, BAD], [BAD, GOOD, OTHER]
    text = [META[0]["text"], None, None]
    with oracle(model, processor.tokenizer, GOOD) as passes:
        assert judge([PROMPT] * 3, a, b, text=text) == [0, 1, None]  # neither is GOOD in row 3: "B" in both orders
        assert judge.win_probabilities([PROMPT] * 3, a, b, text=text) == pytest.approx([1.0, 0.0, 0.5], abs=1e-6)
    assert len(passes[0]) == 6  # one batch: 3 rows x 2 orders
    assert_both_orders(passes[0], a, b)
    assert all(
        p.replace("<|endoftext|>", "").startswith("<|user|>Compare")
        and p.endswith("Answer A or B.<|end|><|assistant|>")
        for p in passes[0]
    )
    assert "Reference transcript: Ada Lovelace" in passes[0][0] and "Reference transcript" not in passes[0][1]
    assert "<|audio|>" not in "".join(passes[0])

    bias_towards_a(model, processor.tokenizer)  # position bias alone: both orders cancel it
    assert judge([PROMPT] * 3, a, b) == [None, None, None]
    assert LLMJudge(model, processor.tokenizer, both_orders=False)([PROMPT] * 3, a, b) == [0, 0, 0]


def test_llm_judge_margin_and_batches(tiny_phi4mm_dir):
    model, processor = load_tiny(tiny_phi4mm_dir)
    a, b = [GOOD, BAD, OTHER], [BAD, OTHER, GOOD]
    judge = LLMJudge(model, processor.tokenizer, margin=0.0, batch_size=4)
    logprobs = judge.answer_logprobs([PROMPT] * 3, a, b)
    alone = torch.cat([judge.answer_logprobs([PROMPT], a[i : i + 1], b[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(logprobs, alone, atol=1e-5, rtol=1e-5)  # a row's answer does not depend on its batch
    probabilities = logprobs.softmax(-1)
    expected = ((probabilities[:, 0, 0] + probabilities[:, 1, 1]) / 2).tolist()
    assert judge.win_probabilities([PROMPT] * 3, a, b) == pytest.approx(expected)
    assert judge([PROMPT] * 3, a, b) == [preference(p) for p in expected]
    # The untrained model barely prefers anything: within the default margin of 0.05, no preference.
    assert all(abs(p - 0.5) < 0.05 for p in expected)
    assert LLMJudge(model, processor.tokenizer)([PROMPT] * 3, a, b) == [None] * 3


@pytest.fixture(params=["tiny_phi4mm_dir", "tiny_qwen2_audio_dir", "tiny_glm_asr_dir"])
def tiny_dir(request):
    return request.getfixturevalue(request.param)


def test_audio_llm_judge_hears_the_clip(tiny_dir):
    model, processor = load_tiny(tiny_dir)
    judge = AudioLLMJudge(model, processor)
    with recorded_prompts(model, processor.tokenizer) as passes:
        first = judge.answer_logprobs([PROMPT], [GOOD], [BAD], audio=[clip(0)])
    assert all(p.count(processor.audio_token) >= 1 for p in passes[0]) and len(passes[0]) == 2
    other = judge.answer_logprobs([PROMPT], [GOOD], [BAD], audio=[clip(1)])
    assert not torch.allclose(first, other, atol=1e-4)  # another clip, other answer log-probs
    torch.testing.assert_close(judge.answer_logprobs([PROMPT], [GOOD], [BAD], audio=[clip(0)]), first)
    # A path in the audio column is decoded at the judge's rate.
    path = str(SAMPLE / META[0]["audio_path"])
    torch.testing.assert_close(judge.answer_logprobs([PROMPT], [GOOD], [BAD], audio=[path]), first)


def test_audio_llm_judge_forced_answers_and_rows_without_audio(tiny_phi4mm_dir):
    model, processor = load_tiny(tiny_phi4mm_dir)
    judge = AudioLLMJudge(model, processor, batch_size=3)
    a, b, audio = [GOOD, BAD], [BAD, GOOD], [clip(0), None]
    # A row without audio is asked without a clip, alongside the others, and answers as it would alone.
    mixed = judge.answer_logprobs([PROMPT] * 2, a, b, audio=audio)
    alone = torch.cat(
        [judge.answer_logprobs([PROMPT], a[i : i + 1], b[i : i + 1], audio=audio[i : i + 1]) for i in (0, 1)]
    )
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-5)

    with oracle(model, processor.tokenizer, GOOD) as passes:
        assert judge([PROMPT] * 2, a, b, audio=audio) == [0, 1]
    prompts = [p for one_pass in passes for p in one_pass]
    assert len(prompts) == 4
    assert_both_orders(prompts, a, b)
    assert sorted(p.count("<|audio|>") > 0 for p in prompts) == [False, False, True, True]

    bias_towards_a(model, processor.tokenizer)
    assert judge([PROMPT] * 2, a, b, audio=audio) == [None, None]
    assert AudioLLMJudge(model, processor, both_orders=False)([PROMPT] * 2, a, b, audio=audio) == [0, 0]


class ChatServer:
    """An OpenAI-compatible chat-completions endpoint on 127.0.0.1 (http.server, one thread per request). Each
    request is answered by `respond(question, attempt, authorization)` -> `(status, content, headers)`, where
    `question` is the user message and `attempt` counts the earlier requests with the same question."""

    def __init__(self, respond):
        self.respond, self.requests, self.attempts = respond, [], Counter()
        self.in_flight = self.peak_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()  # set at teardown: wakes handlers that stall
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # a client that timed out closed its socket
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = body["messages"][-1]["content"]
                with server.lock:
                    attempt = server.attempts[question]
                    server.attempts[question] += 1
                    server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                try:
                    status, content, headers = server.respond(question, attempt, self.headers["Authorization"])
                finally:
                    with server.lock:
                        server.in_flight -= 1
                if status == 200:
                    payload = {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
                    }
                else:
                    payload = {"error": {"message": content, "type": "test_error", "code": None}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def chat_server(monkeypatch, caplog):
    """Starts `ChatServer(respond)`, with the judge's key in the environment and every log record captured."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    servers = []

    def start(respond):
        server = ChatServer(respond)
        threading.Thread(target=server.httpd.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.release.set()
        server.httpd.shutdown()
        server.httpd.server_close()


def answers(question):
    """The two answers of a comparison question."""
    return re.search(r"Answer A: (.*)\nAnswer B: (.*)\n", question).groups()


def prefers(good):
    """A judge model that answers "A" when answer A is `good`, else "B"."""
    return lambda question, attempt, authorization: (200, "A" if answers(question)[0] == good else "B", {})


def openai_judge(server, **options):
    return OpenAIJudge(model="judge-model", base_url=server.url, api_key_env=KEY_ENV, **options)


def assert_no_secret(caplog, judge):
    assert SECRET not in caplog.text and SECRET not in repr(judge) and SECRET not in str(vars(judge))


# Six distinct questions with both orders (the server counts attempts by question).
ROWS = dict(prompts=[PROMPT] * 3, completions_a=[GOOD, OTHER, BAD], completions_b=[BAD, GOOD, OTHER])


def test_openai_judge_asks_both_orders_and_parses_the_letter(chat_server, caplog):
    server = chat_server(prefers(GOOD))
    judge = openai_judge(server)
    assert judge(**ROWS, text=[META[0]["text"], None, None]) == [0, 1, None]  # row 3: "B" in both orders
    assert judge.failures == 0 and len(server.requests) == 6
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "judge-model" and body["max_tokens"] == 1
    assert headers["authorization"] == f"Bearer {SECRET}"  # read from the variable named by api_key_env
    questions = [body["messages"][-1]["content"] for _, _, body in server.requests]
    assert_both_orders(questions, ROWS["completions_a"], ROWS["completions_b"])
    assert sum("Reference transcript: Ada Lovelace" in q for q in questions) == 2

    one_order = openai_judge(server, both_orders=False)
    assert one_order(**ROWS) == [0, 1, 1] and len(server.requests) == 9
    assert "judge-model" in repr(judge) and KEY_ENV in repr(judge)
    assert_no_secret(caplog, judge)


def test_openai_judge_timeout_gives_no_preference_quickly(chat_server, caplog):
    def stall(question, attempt, authorization):
        server.release.wait(3)
        return 200, "A", {}

    server = chat_server(stall)
    judge = openai_judge(server, timeout=0.2, max_retries=0)
    start = time.perf_counter()
    assert judge(**ROWS) == [None, None, None]
    assert time.perf_counter() - start < 1.5
    assert judge.failures == 6 and "6x APITimeoutError" in caplog.text
    assert_no_secret(caplog, judge)


def test_openai_judge_retries_429_with_backoff(chat_server, caplog):
    def rate_limited_once(question, attempt, authorization):
        return (429, "slow down", {}) if attempt == 0 else prefers(GOOD)(question, attempt, authorization)

    server = chat_server(rate_limited_once)
    judge = openai_judge(server, max_retries=2)
    start = time.perf_counter()
    assert judge(**ROWS) == [0, 1, None] and judge.failures == 0
    # Each question: a 429, then an answer after the client's backoff of 0.5 s less up to 25% jitter.
    assert len(server.requests) == 12 and time.perf_counter() - start >= 0.375
    assert_no_secret(caplog, judge)


def test_openai_judge_server_errors_and_malformed_answers_count_as_failures(chat_server, caplog):
    # The server's error text echoes the key, as some do: the judge must not log it.
    server = chat_server(
        lambda question, attempt, authorization: (500, f"boom for {authorization}", {"retry-after-ms": "1"})
    )
    judge = openai_judge(server, max_retries=2)
    assert judge(**ROWS) == [None, None, None]
    assert len(server.requests) == 6 * 3 and judge.failures == 6  # 1 attempt + 2 retries per question
    assert "6x InternalServerError 500" in caplog.text

    replies = iter(["A", "The first answer is better.", "a", " B\n", "A", "B"])
    lock = threading.Lock()

    def garbled(question, attempt, authorization):
        with lock:
            return 200, next(replies), {}

    garbled_judge = openai_judge(chat_server(garbled), max_concurrency=1)
    preferences = garbled_judge(**ROWS)
    # Order (a, b) got "A", garbage, "a"; order (b, a) " B\n" (whitespace aside: a), "A", "B": rows 2 and 3 failed.
    assert preferences == [0, None, None] and garbled_judge.failures == 2
    assert "malformed answer 'The first answer is '" in caplog.text and "malformed answer 'a'" in caplog.text
    assert_no_secret(caplog, judge)


def test_openai_judge_bad_key_raises_without_the_key_and_concurrency_is_bounded(chat_server, caplog, monkeypatch):
    server = chat_server(lambda question, attempt, authorization: (401, f"Incorrect API key: {authorization}", {}))
    judge = openai_judge(server)
    with pytest.raises(RuntimeError, match=f"answered 401.*{KEY_ENV}") as raised:
        judge(**ROWS)
    assert SECRET not in "".join(traceback.format_exception(raised.value))
    assert_no_secret(caplog, judge)

    def slow(question, attempt, authorization):
        server.release.wait(0.1)
        return prefers(GOOD)(question, attempt, authorization)

    server = chat_server(slow)
    # Two requests at once at the most; at least two too, unless a thread waits over 0.1 s to send its request.
    assert openai_judge(server, max_concurrency=2)(**ROWS) == [0, 1, None] and server.peak_in_flight == 2

    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ValueError, match=f"environment variable {KEY_ENV}, which is not set"):
        openai_judge(server)


def test_get_judge_builds_each_judge_by_name(tiny_phi4mm_dir, monkeypatch):
    assert JUDGES == ("reference", "reward_model", "llm", "audio_llm", "openai")
    assert isinstance(get_judge("reference"), ReferenceJudge)
    llm = get_judge("llm", model=str(tiny_phi4mm_dir), margin=0.1)
    assert isinstance(llm, LLMJudge) and llm.margin == 0.1
    audio_llm = get_judge("audio_llm", model=str(tiny_phi4mm_dir), model_kwargs={"speech_lora": "off"})
    assert isinstance(audio_llm, AudioLLMJudge) and audio_llm.sampling_rate == 16000
    assert len(audio_llm.answer_logprobs([PROMPT], [GOOD], [BAD], audio=[clip(0)])) == 1
    monkeypatch.setenv(KEY_ENV, SECRET)
    openai = get_judge("openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV, max_concurrency=2)
    assert isinstance(openai, OpenAIJudge) and openai.max_concurrency == 2
    with pytest.raises(ValueError, match="Did you mean 'reference'"):
        get_judge("refrence")
    with pytest.raises(ValueError, match="Did you mean 'margin' for 'margn'"):  # an option AudioLLMJudge hands on
        get_judge("audio_llm", model=str(tiny_phi4mm_dir), margn=0.1)


def audio_row(index):
    return {
        "id": META[index]["id"],
        "prompt": PROMPT,
        "audio": str(SAMPLE / META[index]["audio_path"]),
        "text": META[index]["text"],
    }


def shorter_wins(question, attempt, authorization):
    first, second = answers(question)
    return 200, "A" if len(first) <= len(second) else "B", {}


@pytest.mark.parametrize("name", JUDGES)
def test_three_training_steps_with_each_judge(
    name, tiny_phi4mm_dir, reward_model_and_tokenizer, chat_server, tmp_path
):
    model, processor = load_tiny(tiny_phi4mm_dir)
    options = {
        "reference": {},
        "reward_model": dict(zip(("model", "tokenizer"), reward_model_and_tokenizer)),
        "llm": {"model": load_tiny(tiny_phi4mm_dir)[0], "processing_class": processor.tokenizer, "margin": 0.0},
        "audio_llm": dict(zip(("model", "processing_class"), load_tiny(tiny_phi4mm_dir)), margin=0.0),
        "openai": {"model": "judge-model", "base_url": chat_server(shorter_wins).url, "api_key_env": KEY_ENV},
    }[name]
    trainer = AudioOnlineDPOTrainer(
        model=model,
        judge=get_judge(name, **options),
        args=AudioOnlineDPOConfig(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=2,
            max_steps=3,
            logging_steps=1,
            max_new_tokens=8,
            num_generations=2,
            report_to="none",
            bf16=False,
            save_strategy="no",
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_list([audio_row(i) for i in range(6)]),
        processing_class=processor,
    )
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 3 and all("rewards/judge_wins/mean" in entry for entry in steps)

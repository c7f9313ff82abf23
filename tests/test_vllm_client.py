"""The vLLM server client against a fake local HTTP server (answers, timeouts, 5xx, refused connections), the weights
it pushes, and the trainer's vLLM path end to end with the fake server answering token ids. No vLLM needed: the tests
against a real server are in tests/vllm_server/ (`make test-vllm`)."""

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Dataset
from helpers import audio_row, make_config, token_sum_reward
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file

from trl_audio import AudioGRPOConfig, AudioGRPOTrainer, AudioOnlineDPOTrainer
from trl_audio.prompt_inputs import SKIPPED_KEY, AudioPromptCollator, prepare_prompts, processor_sampling_rate
from trl_audio.skips import SkipCounter
from trl_audio.testing import load_tiny
from trl_audio.vllm_client import VLLMServerClient, VLLMServerError, chat_messages, checkpoint_state_dict


class FakeServer:
    """A local HTTP server whose answers come from `respond(method, path, body) -> (status, payload)`; it records
    every request as `(method, path, body)`."""

    def __init__(self, respond):
        self.respond, self.requests = respond, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((method, self.path, body))
                status, payload = fake.respond(method, self.path, body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def paths(self, method="POST"):
        return [path for m, path, _ in self.requests if m == method]


def openai_answer(body, prompt_token_ids, samples):
    """A chat completion as vLLM gives it with `return_token_ids`, the choices deliberately out of order."""
    choices = [{"index": k, "token_ids": ids, "finish_reason": "stop"} for k, ids in enumerate(samples)]
    return {"id": "x", "prompt_token_ids": prompt_token_ids, "choices": choices[::-1]}


def standard(method, path, body, chat=None):
    """The endpoints every test server answers; `chat(body)` answers `/v1/chat/completions`."""
    if path == "/v1/models":
        return 200, {"data": [{"id": "tiny"}]}
    if path == "/health":
        return 200, {}
    if path == "/v1/chat/completions":
        return chat(body)
    return 200, {}


def client(url, **kwargs):
    return VLLMServerClient(url, **{"timeout": 2.0, "retries": 1, "retry_delay": 0.05, **kwargs})


def test_chat_sends_the_clip_losslessly_and_returns_token_ids_in_sample_order():
    waveform = np.random.default_rng(0).uniform(-1, 1, 1600).astype(np.float32)
    prompt = [{"role": "user", "content": [{"type": "audio", "audio": True}, {"type": "text", "text": "Transcribe."}]}]

    def chat(body):
        return 200, openai_answer(body, [1, 2, 3], [[10 + k, 2] for k in range(body["n"])])

    with FakeServer(lambda *a: standard(*a, chat=chat)) as server:
        answer = client(server.url).chat(
            chat_messages(prompt, waveform, 16000), n=3, max_tokens=5, temperature=0.7, top_k=None
        )
    assert answer.prompt_token_ids == [1, 2, 3]
    assert answer.completion_token_ids == [[10, 2], [11, 2], [12, 2]]
    body = server.requests[-1][2]
    assert {k: body[k] for k in ("model", "n", "max_tokens", "return_token_ids", "temperature")} == {
        "model": "tiny",
        "n": 3,
        "max_tokens": 5,
        "return_token_ids": True,
        "temperature": 0.7,
    }
    assert "top_k" not in body  # None values are left to the server's defaults
    audio, text = body["messages"][0]["content"]
    assert text == {"type": "text", "text": "Transcribe."}
    decoded, rate = sf.read(io.BytesIO(base64.b64decode(audio["input_audio"]["data"])), dtype="float32")
    assert rate == 16000 and np.array_equal(decoded, waveform)


def test_a_5xx_is_retried_then_raises_naming_the_server():
    calls = []

    def flaky(body):
        calls.append(1)
        return (500, {"error": "engine dead"}) if len(calls) == 1 else (200, openai_answer(body, [1], [[5]]))

    with FakeServer(lambda *a: standard(*a, chat=flaky)) as server:
        assert client(server.url).chat([], n=1, max_tokens=1).completion_token_ids == [[5]]
        assert len(calls) == 2
    with FakeServer(lambda *a: standard(*a, chat=lambda body: (500, {"error": "engine dead"}))) as server:
        with pytest.raises(VLLMServerError, match=r"answered 500.*engine dead.*after 2 tries"):
            client(server.url).chat([], n=1, max_tokens=1)
        assert server.paths().count("/v1/chat/completions") == 2


def test_a_4xx_raises_at_once_with_the_servers_message():
    with FakeServer(lambda *a: standard(*a, chat=lambda body: (400, {"error": "audio limit"}))) as server:
        with pytest.raises(VLLMServerError, match=r"answered 400.*audio limit"):
            client(server.url).chat([], n=1, max_tokens=1)
        assert server.paths().count("/v1/chat/completions") == 1


def test_a_server_that_does_not_answer_times_out_instead_of_hanging():
    def slow(body):
        time.sleep(1.0)
        return 200, openai_answer(body, [1], [[5]])

    with FakeServer(lambda *a: standard(*a, chat=slow)) as server:
        vllm = client(server.url, timeout=0.2)
        vllm.model  # noqa: B018 (fetched before the clock starts)
        start = time.monotonic()
        with pytest.raises(VLLMServerError, match="did not answer.*after 2 tries"):
            vllm.chat([], n=1, max_tokens=1)
        assert time.monotonic() - start < 1.0


def test_no_server_raises_a_clear_error():
    with FakeServer(lambda *a: standard(*a)) as server:
        url = server.url
    with pytest.raises(VLLMServerError, match="did not answer.*is the server running"):
        client(url).chat([], n=1, max_tokens=1)
    with pytest.raises(VLLMServerError, match="not ready after"):
        client(url).wait_until_ready(timeout=0.3, interval=0.1)


def test_too_few_samples_raise():
    with FakeServer(lambda *a: standard(*a, chat=lambda body: (200, openai_answer(body, [1], [[5]])))) as server:
        with pytest.raises(VLLMServerError, match="returned 1 samples for n=2"):
            client(server.url).chat([], n=2, max_tokens=1)


def test_reload_weights_resets_every_cache_and_names_dev_mode_when_missing():
    with FakeServer(lambda *a: standard(*a)) as server:
        client(server.url).reload_weights("/dev/shm/w")
    assert server.paths() == ["/collective_rpc", "/reset_prefix_cache", "/reset_encoder_cache", "/reset_mm_cache"]
    assert server.requests[0][2] == {"method": "reload_weights", "kwargs": {"weights_path": "/dev/shm/w"}}
    with FakeServer(lambda method, path, body: (404, {"detail": "Not Found"})) as server:
        with pytest.raises(VLLMServerError, match="VLLM_SERVER_DEV_MODE=1"):
            client(server.url).reload_weights("/dev/shm/w")


@pytest.mark.parametrize("family", ["tiny_qwen2_audio_dir", "tiny_glm_asr_dir"])
def test_pushed_weights_carry_the_checkpoint_names_and_the_merged_lora(family, request):
    tiny_dir = request.getfixturevalue(family)
    with safe_open(f"{tiny_dir}/model.safetensors", "pt") as f:
        checkpoint = {name: f.get_tensor(name) for name in f.keys()}
    model, _ = load_tiny(tiny_dir)
    state = checkpoint_state_dict(model)
    assert set(checkpoint) <= set(state)
    extra = set(state) - set(checkpoint)  # the tied output layer, which the checkpoint leaves out
    assert extra == ({"language_model.lm_head.weight"} if model.all_tied_weights_keys else set())
    for name in extra:
        assert torch.equal(state[name], checkpoint["language_model.model.embed_tokens.weight"])
    assert all(torch.equal(state[name], checkpoint[name]) for name in checkpoint)

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    state = checkpoint_state_dict(peft_model)
    assert all(torch.equal(p, before[name]) for name, p in peft_model.named_parameters())  # the base is untouched
    merged = checkpoint_state_dict(peft_model.merge_and_unload())
    assert set(state) == set(merged)
    for name in merged:
        torch.testing.assert_close(state[name], merged[name], atol=1e-6, rtol=0)
    changed = [name for name in checkpoint if not torch.equal(state[name], checkpoint[name])]
    assert changed and all("q_proj" in name or "v_proj" in name for name in changed)


class FakeVLLM:
    """Answers the trainer as a vLLM server serving its own model would: each prompt's token ids as the trainer's
    processor gives them (looked up by the prompt's text part), and `n` samples of seeded random tokens below 100,
    less those the request's `logit_bias` forbids (the audio placeholder)."""

    def __init__(self, prompt_ids_by_text, vocab_size, eos_token_id):
        self.prompt_ids_by_text, self.vocab_size, self.eos = prompt_ids_by_text, vocab_size, eos_token_id
        self.generator = np.random.default_rng(0)

    def __call__(self, method, path, body):
        if path != "/v1/chat/completions":
            return standard(method, path, body)
        text = next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text")
        allowed = [i for i in range(100) if str(i) not in body.get("logit_bias", {})]
        samples = []
        for _ in range(body["n"]):
            ids = self.generator.choice(allowed, size=self.generator.integers(1, body["max_tokens"] + 1)).tolist()
            samples.append(ids + [self.eos] if len(ids) < body["max_tokens"] else ids)
        return 200, openai_answer(body, self.prompt_ids_by_text[text], samples)


def vllm_rows():
    return [audio_row(i, f"Transcribe clip {i}.") for i in range(4)]


def prompt_ids_by_text(processor, rows):
    """Each row's prompt token ids as the trainers' processor path gives them, by the prompt's text part."""
    batch = AudioPromptCollator(processor_sampling_rate(processor))(rows)
    batch.pop(SKIPPED_KEY)
    _, inputs = prepare_prompts(processor, batch, None, 0, "max_new_tokens", "raise", SkipCounter())
    return {
        row["prompt"][0]["content"][1]["text"]: ids[mask.bool()].tolist()
        for row, ids, mask in zip(rows, inputs["input_ids"], inputs["attention_mask"])
    }


def vllm_trainer(tmp_path, tiny_dir, url, **overrides):
    model, processor = load_tiny(tiny_dir)
    args = make_config(
        tmp_path / "out",
        use_vllm=True,
        vllm_server_base_url=url,
        vllm_weights_dir=str(tmp_path / "weights"),
        vllm_server_timeout=5.0,
        num_generations=3,
        **overrides,
    )
    return AudioOnlineDPOTrainer(
        model=model,
        reward_funcs=token_sum_reward,
        args=args,
        train_dataset=Dataset.from_list(vllm_rows()),
        processing_class=processor,
    )


def test_trainer_trains_on_the_servers_samples_and_pushes_weights_each_step(tiny_qwen2_audio_dir, tmp_path):
    fake = FakeVLLM({}, 100, 0)
    with FakeServer(lambda *a: fake(*a)) as server:
        trainer = vllm_trainer(tmp_path, tiny_qwen2_audio_dir, server.url)
        fake.prompt_ids_by_text = prompt_ids_by_text(trainer.processing_class, vllm_rows())
        fake.eos = trainer.eos_token_ids[0]
        initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    chats = [body for _, path, body in server.requests if path == "/v1/chat/completions"]
    assert len(chats) == 3 * 2 and all(body["n"] == 3 and body["max_tokens"] == 8 for body in chats)
    assert all(body["logit_bias"] == {str(trainer.processing_class.audio_token_id): -100} for body in chats)
    assert server.paths().count("/collective_rpc") == 3  # before steps 1, 2, 3
    assert all(not torch.equal(p, initial[name]) for name, p in trainer.model.named_parameters() if p.requires_grad)
    pushed = load_file(tmp_path / "weights/model.safetensors")  # the last push: the weights after step 2
    assert (tmp_path / "weights/config.json").exists() and (tmp_path / "weights/tokenizer_config.json").exists()
    with safe_open(f"{tiny_qwen2_audio_dir}/model.safetensors", "pt") as f:
        assert set(f.keys()) <= set(pushed)
        assert any(not torch.equal(f.get_tensor(name), pushed[name]) for name in f.keys())


def test_trainer_pushes_every_vllm_sync_steps(tiny_qwen2_audio_dir, tmp_path):
    fake = FakeVLLM({}, 100, 0)
    with FakeServer(lambda *a: fake(*a)) as server:
        trainer = vllm_trainer(tmp_path, tiny_qwen2_audio_dir, server.url, vllm_sync_steps=2, max_steps=4)
        fake.prompt_ids_by_text = prompt_ids_by_text(trainer.processing_class, vllm_rows())
        trainer.train()
    assert server.paths().count("/collective_rpc") == 2  # before steps 1 and 3


def test_a_prompt_the_server_tokenizes_differently_raises_naming_the_row(tiny_qwen2_audio_dir, tmp_path):
    fake = FakeVLLM({}, 100, 0)
    with FakeServer(lambda *a: fake(*a)) as server:
        trainer = vllm_trainer(tmp_path, tiny_qwen2_audio_dir, server.url)
        fake.prompt_ids_by_text = prompt_ids_by_text(trainer.processing_class, vllm_rows())
        fake.prompt_ids_by_text["Transcribe clip 1."] = fake.prompt_ids_by_text["Transcribe clip 1."][:-1]
        with pytest.raises(ValueError, match=r"row id='.+': the vLLM server tokenized its prompt into \d+ tokens"):
            trainer.train()


def test_phi4mm_and_colocate_are_refused_early(tiny_phi4mm_dir, tmp_path):
    with pytest.raises(ValueError, match="vllm_mode='colocate' is not supported"):
        make_config(tmp_path, use_vllm=True, vllm_mode="colocate")
    with FakeServer(lambda *a: standard(*a)) as server, pytest.raises(ValueError, match="Qwen2-Audio and GLM-ASR"):
        vllm_trainer(tmp_path, tiny_phi4mm_dir, server.url)


def test_grpo_trains_on_the_servers_samples_through_the_same_sampler(tiny_qwen2_audio_dir, tmp_path):
    """AudioGRPOTrainer with `use_vllm`: each unique prompt of a generation batch goes to the server once, for as
    many samples as the batch holds of it (TRL's GRPO order: a prompt's samples side by side), the weights are pushed
    before each step, and training runs on the server's samples."""
    fake = FakeVLLM({}, 100, 0)
    with FakeServer(lambda *a: fake(*a)) as server:
        model, processor = load_tiny(tiny_qwen2_audio_dir)
        config = AudioGRPOConfig(
            output_dir=str(tmp_path / "out"), use_vllm=True, vllm_server_base_url=server.url,
            vllm_weights_dir=str(tmp_path / "weights"), vllm_server_timeout=5.0, per_device_train_batch_size=6,
            num_generations=3, max_completion_length=8, max_steps=2, logging_steps=1, report_to="none",
            save_strategy="no", disable_tqdm=True,
        )  # fmt: skip
        trainer = AudioGRPOTrainer(
            model=model, reward_funcs=token_sum_reward, args=config, train_dataset=Dataset.from_list(vllm_rows()),
            processing_class=processor,
        )  # fmt: skip
        fake.prompt_ids_by_text = prompt_ids_by_text(processor, vllm_rows())
        fake.eos = trainer.eos_token_ids[0]
        initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(loss == loss for loss in losses)
    chats = [body for _, path, body in server.requests if path == "/v1/chat/completions"]
    assert len(chats) == 2 * 2 and all(body["n"] == 3 and body["max_tokens"] == 8 for body in chats)
    assert server.paths().count("/collective_rpc") == 2  # before steps 1 and 2
    assert any(not torch.equal(p, initial[name]) for name, p in trainer.model.named_parameters() if p.requires_grad)

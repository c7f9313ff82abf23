"""HTTP client of a vLLM OpenAI-compatible server (`scripts/vllm_server.sh serve`): samples completions of audio + text
chat prompts with their token ids, and loads new weights into the server from a folder it can read."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn as nn
from accelerate import Accelerator
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from transformers import PreTrainedModel
from transformers.core_model_loading import revert_weight_conversion
from trl.data_utils import is_conversational
from trl.experimental.utils import truncate_right

from .prompt_embeds import PromptBatch, weights_sharded
from .prompt_inputs import normalize_prompt, placeholder_token_ids, processor_sampling_rate, row_name


logger = logging.getLogger(__name__)

# Creates .venv-vllm and starts the server (`setup`, `serve MODEL [args]`).
SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts/vllm_server.sh"
VLLM_VENV = SERVER_SCRIPT.parents[1] / ".venv-vllm"


class VLLMServerError(RuntimeError):
    """The vLLM server could not be reached, timed out, or answered with an error."""


@dataclass
class ChatSamples:
    """One prompt's answer: the prompt's token ids as the server tokenized it, and each sample's token ids (with the
    end token where the sample stopped on it) and finish reason (`"stop"`, `"length"`)."""

    prompt_token_ids: list[int]
    completion_token_ids: list[list[int]]
    finish_reasons: list[str]


def audio_part(waveform: np.ndarray, sampling_rate: int) -> dict:
    """An OpenAI `input_audio` content part carrying `waveform` losslessly: a 32-bit float WAV (FLAC and 16-bit WAV
    would quantize the samples, and the server's features would then differ from the trainer's)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(waveform, dtype=np.float32), sampling_rate, format="WAV", subtype="FLOAT")
    return {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(buffer.getvalue()).decode(), "format": "wav"},
    }


def chat_messages(prompt: list[dict], waveform: np.ndarray | None, sampling_rate: int | None) -> list[dict]:
    """A conversational prompt (audio parts as `{"type": "audio"}`, as `prompt_inputs.normalize_prompt` leaves them)
    as OpenAI chat messages, the row's clip in place of its audio part."""
    messages = []
    for message in prompt:
        content = message["content"]
        if not isinstance(content, str):
            content = [
                audio_part(waveform, sampling_rate)
                if part["type"] == "audio"
                else {k: v for k, v in part.items() if k in ("type", "text")}
                for part in content
            ]
        messages.append({"role": message["role"], "content": content})
    return messages


class VLLMServerClient:
    """Talks to one vLLM server at `base_url` (e.g. `http://127.0.0.1:8000`).

    Every request has a `timeout` (seconds). Connection failures, timeouts and 5xx answers are retried `retries`
    times, `retry_delay` seconds apart, then raise `VLLMServerError` naming the server and the endpoint; 4xx answers
    raise at once with the server's message. `max_workers` requests are in flight at once (one per prompt: the server
    batches them).
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 240.0,
        retries: int = 2,
        retry_delay: float = 1.0,
        max_workers: int = 32,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.retry_delay, self.max_workers = timeout, retries, retry_delay, max_workers
        self._model: str | None = None

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> Any:
        url = f"{self.base_url}{path}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_delay)
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                    payload = response.read()
                return json.loads(payload) if payload else None
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if e.code < 500:
                    raise VLLMServerError(f"vLLM server {method} {url} answered {e.code}: {detail}") from e
                last_error = f"answered {e.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                last_error = f"did not answer ({reason!r})"
            logger.warning(
                "vLLM server %s %s %s (try %d of %d)", method, url, last_error, attempt + 1, self.retries + 1
            )
        raise VLLMServerError(
            f"vLLM server {method} {url} {last_error} after {self.retries + 1} tries: is the server running "
            "(scripts/vllm_server.sh serve MODEL) and is vllm_server_base_url right?"
        )

    def wait_until_ready(self, timeout: float = 600.0, interval: float = 1.0) -> None:
        """Polls `/health` until the server answers 200, at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=interval + 5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise VLLMServerError(f"vLLM server {self.base_url} not ready after {timeout:.0f} s.")
            time.sleep(interval)

    @property
    def model(self) -> str:
        """The name the server serves its model under (its first in `/v1/models`)."""
        if self._model is None:
            self._model = self._request("GET", "/v1/models")["data"][0]["id"]
        return self._model

    def chat(self, messages: list[dict], n: int, max_tokens: int, **sampling: Any) -> ChatSamples:
        """`n` samples of at most `max_tokens` tokens for one chat prompt. `sampling`: vLLM sampling parameters
        (`temperature`, `top_p`, `top_k`, `min_p`, `repetition_penalty`, `logit_bias`, ...; None values left out)."""
        body = {
            "model": self.model,
            "messages": messages,
            "n": n,
            "max_tokens": max_tokens,
            "return_token_ids": True,
            **{k: v for k, v in sampling.items() if v is not None},
        }
        answer = self._request("POST", "/v1/chat/completions", body)
        choices = sorted(answer["choices"], key=lambda choice: choice["index"])
        if len(choices) != n or answer.get("prompt_token_ids") is None:
            raise VLLMServerError(
                f"vLLM server {self.base_url} returned {len(choices)} samples for n={n}"
                + ("" if answer.get("prompt_token_ids") is not None else " and no prompt_token_ids")
                + ": it needs vLLM >= 0.10.2 (return_token_ids)."
            )
        return ChatSamples(
            answer["prompt_token_ids"],
            [choice["token_ids"] for choice in choices],
            [choice.get("finish_reason") for choice in choices],
        )

    def chat_many(
        self, conversations: list[list[dict]], n: int | list[int], max_tokens: int, **sampling: Any
    ) -> list[ChatSamples]:
        """`chat` for each conversation, sent concurrently, with `n` samples each (or `n[i]` for conversation i);
        answers in the conversations' order."""
        counts = n if isinstance(n, list) else [n] * len(conversations)
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_workers, len(conversations)))) as pool:
            futures = [
                pool.submit(self.chat, messages, count, max_tokens, **sampling)
                for messages, count in zip(conversations, counts)
            ]
            return [future.result() for future in futures]

    def reload_weights(self, weights_path: str) -> None:
        """Loads the safetensors weights in `weights_path` (a folder the server can read: same machine or shared
        storage) into the server's model, and drops every cache computed with the old weights. Needs the server in
        dev mode (`VLLM_SERVER_DEV_MODE=1`: `/collective_rpc`)."""
        body = {"method": "reload_weights", "kwargs": {"weights_path": weights_path}}
        try:
            self._request("POST", "/collective_rpc", body)
        except VLLMServerError as e:
            if "answered 404" in str(e):
                raise VLLMServerError(f"{e}\nStart the server with VLLM_SERVER_DEV_MODE=1 (weight pushes).") from e
            raise
        # Without the encoder-cache reset the server reuses audio embeddings of the old weights ("Encoder cache miss").
        for path in ("/reset_prefix_cache", "/reset_encoder_cache", "/reset_mm_cache"):
            self._request("POST", path)


def checkpoint_state_dict(model: PreTrainedModel | PeftModel) -> dict[str, torch.Tensor]:
    """The model's weights under the names of its checkpoint, with any PEFT LoRA adapter merged into copies of the
    weights it adapts (the model itself is left as it is). A tied output layer (`lm_head`, which `save_pretrained`
    leaves out) is written too, under the language model's prefix (GLM-ASR: `language_model.lm_head.weight`, the name
    vLLM knows): vLLM's CPU backend repacks it apart from the input embeddings, and would keep the old one."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    adapters = model.active_adapters if isinstance(model, PeftModel) else []
    state = {}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or ".original_module." in name:
            continue
        name = name.replace(".base_layer.", ".")
        for adapter in adapters:
            name = name.replace(f".modules_to_save.{adapter}.", ".")
        if name not in base.all_tied_weights_keys:
            state[name] = tensor.detach()
    for name, module in base.named_modules():
        if isinstance(module, BaseTunerLayer) and not module.merged:
            if any(module.use_dora.get(a) for a in module.active_adapters):
                raise ValueError(f"{name}: DoRA adapters cannot be pushed to vLLM yet (merge them first).")
            deltas = [module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A]
            if deltas:
                state[f"{name}.weight"] = state[f"{name}.weight"] + sum(deltas)
    state = revert_weight_conversion(base, state)
    for target, source in base.all_tied_weights_keys.items():
        if target.endswith("lm_head.weight"):
            checkpoint_source = next(iter(revert_weight_conversion(base, {source: torch.empty(0)})))
            prefix = (
                checkpoint_source.split("model.embed_tokens")[0] if "model.embed_tokens" in checkpoint_source else ""
            )
            state[prefix + "lm_head.weight"] = base.get_output_embeddings().weight.detach()
    seen: set[int] = set()
    unique = {}
    for name, tensor in state.items():  # safetensors stores no two names on one storage (tied weights)
        pointer = tensor.untyped_storage().data_ptr()
        unique[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return unique


def write_weights(model: PreTrainedModel | PeftModel, folder: str) -> None:
    """Writes `checkpoint_state_dict(model)` to `folder/model.safetensors`, for `VLLMServerClient.reload_weights`."""
    save_file({k: v.contiguous() for k, v in checkpoint_state_dict(model).items()}, f"{folder}/model.safetensors")


class LocalVLLMServer:
    """A vLLM server on 127.0.0.1 (a free port) for `model_dir`, started with `scripts/vllm_server.sh serve` from the
    repository's `.venv-vllm`, in its own process group and pinned to `cores` (taskset), its output in `log`: for tests
    and benchmarks. `url` is its address once `__init__` returns (ready); `stop` ends its process group. It serves in
    `dtype`: vLLM's CPU backend otherwise downcasts float32 checkpoints to bfloat16, and then samples from a rounded
    copy of a float32 policy (greedy outputs part from HF's at near ties)."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        log: str | os.PathLike,
        cores: str = "0",
        timeout: float = 420,
        dtype: str = "float32",
    ):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url, self.model_dir, self.log = f"http://127.0.0.1:{port}", Path(model_dir), Path(log)
        # As little KV cache as small models need, and one OpenMP thread per pinned core.
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": str(len(cores.split(",")))}
        command = ["taskset", "-c", cores, str(SERVER_SCRIPT), "serve", str(model_dir), "--port", str(port)]
        command += ["--max-model-len", "2048", "--dtype", dtype]
        with open(self.log, "w") as f:
            self.process = subprocess.Popen(
                command, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            VLLMServerClient(self.url).wait_until_ready(timeout=timeout)
        except VLLMServerError:
            self.stop()
            raise VLLMServerError(f"vLLM server did not start; its log:\n{self.log.read_text()[-3000:]}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> LocalVLLMServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# Model types vLLM cannot serve from our checkpoints, and why.
VLLM_UNSUPPORTED = {
    "phi4_multimodal": "vLLM (0.32) serves Phi-4-multimodal only in its original remote-code layout "
    "(Phi4MMForCausalLM with its own processor); given transformers' native layout it falls back to a text-only "
    "model, which cannot hear the audio. vLLM serves Qwen2-Audio and GLM-ASR (tested); for Phi-4-MM set "
    "use_vllm=False (HF generate). See examples/scripts/README_phi4_multimodal_dpo.md, 'vLLM generation'.",
}


def prompt_mismatch(server: list[int], ours: list[int]) -> str:
    """Says where the vLLM server's prompt token ids part from the trainer's."""
    first = next((i for i, (a, b) in enumerate(zip(server, ours)) if a != b), min(len(server), len(ours)))
    return (
        f"the vLLM server tokenized its prompt into {len(server)} tokens, the trainer's processor into {len(ours)}; "
        f"they first differ at position {first} (server: {server[first : first + 5]}, trainer: "
        f"{ours[first : first + 5]}). Serve the same checkpoint (processor, chat template) as the trainer's model."
    )


class VLLMSampler:
    """A trainer's sampler on a vLLM server (`use_vllm=True`, `vllm_mode="server"`): the prompts go to the server as
    chat messages with each row's clip (the server's processor builds its features), every process sending its own,
    and the policy's weights (any LoRA merged into copies) are pushed to the server through a folder before the first
    sampling and then every `vllm_sync_steps` optimizer steps (`sync`). Checks at creation that vLLM can serve the
    model and that its weights can be pushed.

    `args` is the trainer's config: `vllm_server_base_url` (or `vllm_server_host` and `vllm_server_port`),
    `vllm_server_timeout`, `vllm_sync_steps`, `vllm_weights_dir`.
    """

    def __init__(self, model: nn.Module, processing_class: Any, accelerator: Accelerator, args: Any):
        config = accelerator.unwrap_model(model).config
        if config.model_type in VLLM_UNSUPPORTED:
            raise ValueError(f"use_vllm: {VLLM_UNSUPPORTED[config.model_type]}")
        if weights_sharded(accelerator):
            raise ValueError(
                "use_vllm: pushing FSDP or ZeRO-3 sharded weights to the vLLM server is not supported yet."
            )
        base_url = args.vllm_server_base_url or f"http://{args.vllm_server_host}:{args.vllm_server_port}"
        self.client = VLLMServerClient(base_url, timeout=args.vllm_server_timeout)
        self.processing_class = processing_class
        self.sampling_rate = processor_sampling_rate(processing_class)
        self.accelerator = accelerator
        self.sync_steps = args.vllm_sync_steps
        self.weights_dir = args.vllm_weights_dir
        self.synced_step: int | None = None

    def sync(self, model: nn.Module, step: int) -> None:
        """Pushes the weights if none were pushed yet or `step` (the optimizer step) starts a new sync period."""
        if self.synced_step is None or (step != self.synced_step and step % self.sync_steps == 0):
            self.push_weights(model, step)

    def push_weights(self, model: nn.Module, step: int) -> None:
        """Writes the policy's weights (any LoRA merged into copies) to the weights folder (with the config and
        processor files, on the first push) and has the server load them: on the main process, the others wait."""
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(model)
            if self.synced_step is None:
                self.weights_dir = self.weights_dir or tempfile.mkdtemp(
                    prefix="trl_audio_vllm_", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
                )
                os.makedirs(self.weights_dir, exist_ok=True)
                model.config.save_pretrained(self.weights_dir)
                self.processing_class.save_pretrained(self.weights_dir)
            start = time.perf_counter()
            with torch.no_grad():
                write_weights(model, self.weights_dir)
            self.client.reload_weights(self.weights_dir)
            logger.info("Pushed the weights to the vLLM server in %.2f s.", time.perf_counter() - start)
        self.accelerator.wait_for_everyone()
        self.synced_step = step

    def sample(
        self,
        batch: PromptBatch,
        inputs: dict[str, list],
        rows: list[int],
        max_tokens: int,
        eos_token_ids: list[int],
        pad_token_id: int,
        **sampling: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One completion per entry of `rows` (sample k continues prompt `rows[k]` of `batch`, whose columns are
        `inputs`: any order, repeats allowed), as `generation.sample` returns them: `(completion_ids,
        completion_mask)`, right-padded after each sample's first end token. Each prompt is sent once, for as many
        samples as `rows` asks of it. The server's prompt token ids must equal the trainer's processor's (else an
        error names the row). `sampling`: temperature, top_p, top_k, min_p, repetition_penalty."""
        conversations = []
        audios = inputs.get("audio") or [None] * len(batch)
        for index, (prompt, audio) in enumerate(zip(inputs["prompt"], audios)):
            if not is_conversational({"prompt": prompt}):
                row = {key: values[index] for key, values in inputs.items()}
                raise ValueError(f"{row_name(row, index)}: vLLM generation takes conversational prompts (messages).")
            conversations.append(chat_messages(normalize_prompt(prompt, audio is not None), audio, self.sampling_rate))
        counts = [rows.count(index) for index in range(len(batch))]
        asked = [index for index, count in enumerate(counts) if count]
        answers = dict(
            zip(
                asked,
                self.client.chat_many(
                    [conversations[index] for index in asked],
                    n=[counts[index] for index in asked],
                    max_tokens=max_tokens,
                    # as `suppress_tokens` in HF generate: a sampled placeholder would make the model look for audio
                    logit_bias={str(t): -100 for t in placeholder_token_ids(self.processing_class)} or None,
                    **sampling,
                ),
            )
        )
        for index, answer in answers.items():
            ours = batch.inputs["input_ids"][index][batch.inputs["attention_mask"][index].bool()].tolist()
            if answer.prompt_token_ids != ours:
                row = {key: values[index] for key, values in inputs.items()}
                raise ValueError(f"{row_name(row, index)}: {prompt_mismatch(answer.prompt_token_ids, ours)}")
        remaining = {index: iter(answer.completion_token_ids) for index, answer in answers.items()}
        samples = [next(remaining[index]) for index in rows]
        device = batch.inputs["input_ids"].device
        completion_ids = torch.full((len(samples), max(map(len, samples))), pad_token_id, device=device)
        for row, ids in enumerate(samples):
            completion_ids[row, : len(ids)] = torch.tensor(ids, device=device)
        return truncate_right(completion_ids, eos_token_ids, pad_token_id)

"""Each clip encoded once per step: the audio embeddings a model merges into its prompt's input embeddings, taken from
one pass over the batch's unique prompts and reused for the N samples' generation and the policy and reference passes.

Family-independent: the embeddings are read where they enter the text decoder's first layer (every audio LLM in
transformers merges the audio there as rows of its input embeddings, at the audio placeholder positions), and put back
with the model's own text embeddings as `inputs_embeds`. Valid while the modules that produce the audio rows (encoder,
projector) are frozen: `audio_path_trains` tells, and the caller then passes the processor's features as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import DistributedType
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer

from .prompt_inputs import select_rows, to_model_inputs


logger = logging.getLogger(__name__)


class _ReachedDecoder(Exception):
    """Raised by the capture hook to stop the forward pass once the input embeddings are known."""


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The text decoder's layers, or None when the model does not expose them through `get_decoder()`."""
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    if not hasattr(model, "get_decoder"):
        return None
    layers = getattr(model.get_decoder(), "layers", None)
    return layers if isinstance(layers, nn.ModuleList) and len(layers) > 0 else None


@dataclass
class AudioEmbeddings:
    """The audio rows of the input embeddings of a batch's prompts: `rows[i]` holds prompt i's embeddings at its
    `placeholder_id` positions, in order (`(num_placeholders, hidden)`; no rows for a text-only prompt)."""

    rows: list[torch.Tensor]
    placeholder_id: int

    def select(self, indices: list[int]) -> AudioEmbeddings:
        """The embeddings of the prompts at `indices` (repeats allowed), in that order."""
        return AudioEmbeddings([self.rows[i] for i in indices], self.placeholder_id)

    def inputs_embeds(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """The input embeddings of `input_ids` (one row per selected prompt, completions appended or not): the model's
        text embeddings, with these audio rows at the placeholder positions. Gradients reach the text embeddings."""
        embeds = model.get_input_embeddings()(input_ids)
        positions = input_ids == self.placeholder_id
        audio = torch.cat(self.rows).to(embeds.dtype)
        if int(positions.sum()) != audio.size(0):
            raise RuntimeError(
                f"{int(positions.sum())} audio placeholders in the batch for {audio.size(0)} audio embedding rows: "
                "the prompts and their embeddings do not belong together."
            )
        return embeds.masked_scatter(positions.unsqueeze(-1), audio)


class AudioEmbeddingReader:
    """Reads the audio rows of a model's prompt embeddings (`read`), and tells whether they can be reused: whether the
    modules that produce them train (`audio_path_trains`) or hold a PEFT adapter (`audio_path_has_adapter`).

    The modules on the audio path are those whose forward completes before the first decoder layer runs, less the text
    embedding table; they are found on the first read.
    """

    def __init__(self, model: nn.Module, placeholder_id: int):
        self.model = model
        self.placeholder_id = placeholder_id
        self.layers = decoder_layers(model)
        self.audio_modules: list[nn.Module] | None = None

    @property
    def supported(self) -> bool:
        return self.layers is not None

    def audio_path_trains(self) -> bool:
        """Whether a parameter on the audio path takes gradients (known after the first `read`; True before)."""
        if self.audio_modules is None:
            return True
        return any(p.requires_grad for m in self.audio_modules for p in m.parameters(recurse=False))

    def audio_path_has_adapter(self) -> bool:
        """Whether a PEFT adapter sits on the audio path, so that disabling it changes the audio embeddings."""
        return any(isinstance(m, BaseTunerLayer) for m in self.audio_modules or [])

    @torch.no_grad()
    def read(self, inputs: dict[str, torch.Tensor]) -> AudioEmbeddings:
        """One pass of `model(**inputs)` (the processor's outputs for the prompts) up to the first decoder layer, in
        eval mode (so the encoder is deterministic: Phi-4-MM's draws random streaming masks in train mode); the model's
        mode is restored."""
        captured: dict[str, torch.Tensor] = {}
        completed: list[nn.Module] = []

        def capture(module, args, kwargs):
            captured["embeds"] = args[0] if args else kwargs["hidden_states"]
            raise _ReachedDecoder

        handles = [self.layers[0].register_forward_pre_hook(capture, with_kwargs=True)]
        if self.audio_modules is None:
            handles.append(nn.modules.module.register_module_forward_hook(lambda m, i, o: completed.append(m)))
        was_training = self.model.training
        self.model.eval()
        try:
            self.model(**inputs)
        except _ReachedDecoder:
            pass
        finally:
            self.model.train(was_training)
            for handle in handles:
                handle.remove()
        if "embeds" not in captured:
            raise RuntimeError("The model's forward pass never reached its first decoder layer.")
        if self.audio_modules is None:
            text_embeddings = self.model.get_input_embeddings()
            owned = {id(m) for m in self.model.modules()}
            self.audio_modules = [m for m in completed if id(m) in owned and m is not text_embeddings]
        embeds, input_ids = captured["embeds"], inputs["input_ids"]
        positions = input_ids == self.placeholder_id
        return AudioEmbeddings([embeds[i][positions[i]] for i in range(len(input_ids))], self.placeholder_id)


@dataclass
class PromptBatch:
    """A step's prompts as the model takes them: the processor's outputs for the B unique prompts (`inputs`), which of
    them carry a clip (`audio_rows`), and their reusable audio embeddings (`embeddings`; None when the features must
    go through the model's encoder in every pass). `model_inputs` gives the model's keyword arguments for any
    selection of these prompts, with completions appended or not, so generation and every forward pass read the
    audio the same way, whatever the model family."""

    inputs: dict[str, torch.Tensor]
    audio_rows: list[int]
    embeddings: AudioEmbeddings | None = None

    def __len__(self) -> int:
        return self.inputs["input_ids"].size(0)

    def model_inputs(
        self, model: nn.Module, rows: list[int], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Keyword arguments of `model` for `input_ids` and `attention_mask`, whose row k starts with prompt
        `rows[k]`."""
        if self.embeddings is not None:
            inputs_embeds = self.embeddings.select(rows).inputs_embeds(model, input_ids)
            return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        features = select_rows(self.inputs, rows, self.audio_rows)
        del features["input_ids"], features["attention_mask"]
        return {"input_ids": input_ids, "attention_mask": attention_mask, **features}


def weights_sharded(accelerator: Accelerator) -> bool:
    """Whether each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3): embeddings cannot then be
    read outside the wrapped model's forward, nor weights pushed from one process."""
    deepspeed = accelerator.state.deepspeed_plugin
    return accelerator.distributed_type == DistributedType.FSDP or (
        deepspeed is not None and deepspeed.zero_stage == 3
    )


class PromptEncoder:
    """Builds a step's (or a generation batch's) `PromptBatch` for the policy and for the reference, with each model's
    audio embeddings read once where they may be reused: `reuse` is on (`reuse_audio_embeddings`), the batch has
    audio, the weights are whole on this process, the model exposes its decoder layers, and its audio path does not
    train (known after a first read; checked on every batch). One reader per model, kept across batches."""

    def __init__(self, accelerator: Accelerator, placeholder_ids: list[int], reuse: bool):
        self.accelerator = accelerator
        self.placeholder_id = placeholder_ids[0] if placeholder_ids else None
        self.reuse = reuse
        self.readers: dict[int, AudioEmbeddingReader | None] = {}

    def reader(self, model: nn.Module, batch: PromptBatch, trains: bool = True) -> AudioEmbeddingReader | None:
        """`model`'s reader when its audio embeddings may be read once and reused for `batch`, else None. `trains`:
        whether `model` is trained (the policy), so that embeddings go stale when its audio path takes gradients; a
        separate reference model's do not, whatever its `requires_grad` flags say (its passes run without them)."""
        if not batch.audio_rows or not self.reuse or weights_sharded(self.accelerator):
            return None
        model = self.accelerator.unwrap_model(model)
        if id(model) not in self.readers:
            reader = AudioEmbeddingReader(model, self.placeholder_id)
            if not reader.supported:
                logger.warning("%s exposes no decoder layers: every pass encodes the clips.", type(model).__name__)
            self.readers[id(model)] = reader if reader.supported else None
        reader = self.readers[id(model)]
        if reader is None or (trains and reader.audio_modules is not None and reader.audio_path_trains()):
            return None
        return reader

    def policy_batch(
        self, model: nn.Module, prompt_inputs: dict[str, torch.Tensor], audio_rows: list[int]
    ) -> PromptBatch:
        """The prompts for the policy (`audio_rows`: those with a clip, `prompt_inputs.audio_rows`): the processor's
        outputs on the model's device, and the audio embeddings read once when they can be reused."""
        batch = PromptBatch(to_model_inputs(model, prompt_inputs), audio_rows)
        reader = self.reader(model, batch)
        if reader is None:
            return batch
        embeddings = reader.read(batch.inputs)
        # The first read finds the modules on the audio path: only then is it known whether they train.
        return batch if reader.audio_path_trains() else replace(batch, embeddings=embeddings)

    def reference_batch(self, batch: PromptBatch, policy: nn.Module, ref_model: nn.Module | None) -> PromptBatch:
        """The prompts for the reference: the policy's audio embeddings where they are the reference's too (the policy
        with its PEFT adapter disabled, unless the adapter sits on the audio path), or the reference model's own, read
        once; the processor's features where embeddings cannot be reused."""
        if ref_model is None:
            reader = self.reader(policy, batch)
            if batch.embeddings is None or reader is None or not reader.audio_path_has_adapter():
                return batch
            with self.accelerator.unwrap_model(policy).disable_adapter():
                return replace(batch, embeddings=reader.read(batch.inputs))
        reader = self.reader(ref_model, batch, trains=False)
        return replace(batch, embeddings=reader.read(batch.inputs) if reader is not None else None)

    def shared_with_adapter_off(self, batch: PromptBatch, policy: nn.Module) -> PromptBatch:
        """`batch` for passes of the policy both with and without its PEFT adapter, where the caller cannot tell them
        apart (TRL's reference pass without a `ref_model` is the policy's own call): as it is, or without its
        embeddings when an adapter sits on the audio path (they differ with it off), so that every pass encodes."""
        if batch.embeddings is None or not self.reader(policy, batch).audio_path_has_adapter():
            return batch
        return replace(batch, embeddings=None)

"""Model loading: an audio LLM and its processor through the native transformers classes, with Phi-4-multimodal's
speech LoRA merged, trained or left off (`init_model`), in 4 or 8 bits with bitsandbytes if asked
(`quantization_load_kwargs`)."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from peft import PeftModel


logger = logging.getLogger(__name__)

SPEECH_LORA_MODES = ("merge", "train", "off")
_LLAMA_LIKE_DECODER = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
# Where a LoRA goes when none is named (`--use_peft` alone): every projection of the text decoder, as full-match
# regexes over module names. Plain names such as `o_proj` or `down_proj` also match layers of the audio encoders,
# whose LoRA would then train the encoder, so that its embeddings could no longer be computed once per step.
DECODER_LORA_TARGETS = {
    "phi4_multimodal": r"model\.layers\.\d+\.(self_attn\.(qkv|o)_proj|mlp\.(gate_up|down)_proj)",  # the speech LoRA's
    "qwen2_audio": _LLAMA_LIKE_DECODER,
    "glmasr": _LLAMA_LIKE_DECODER,
}
# The modules that turn a clip into the decoder's input embeddings (audio encoder and projector), by family.
AUDIO_PATH_MODULES = {
    "phi4_multimodal": ("model.embed_tokens_extend.audio_embed",),
    "qwen2_audio": ("model.audio_tower", "model.multi_modal_projector"),
    "glmasr": ("model.audio_tower", "model.multi_modal_projector"),
}

# The audio encoder alone (the path less its projector), by family: what stays frozen when a pretrained encoder
# feeds a projector and decoder that train (`testing.build_whisper_qwen2_audio`).
AUDIO_ENCODER_MODULES = {
    "phi4_multimodal": ("model.embed_tokens_extend.audio_embed.encoder",),
    "qwen2_audio": ("model.audio_tower",),
    "glmasr": ("model.audio_tower",),
}


def freeze_audio_path(model, projector: bool = True) -> int:
    """Stop gradients to the audio encoder and projector of `model` (`AUDIO_PATH_MODULES`), or with
    `projector=False` to the encoder only (`AUDIO_ENCODER_MODULES`); returns how many parameters were frozen. With the
    whole path frozen, training changes the text decoder only, and the trainer encodes each clip once per step
    (`reuse_audio_embeddings`).

    Why a warm start from scratch wants it (`scripts/train_warm_start.py`): trained together with a random decoder,
    the small Phi-4-MM's projector learned to write one large constant vector at every audio position (norm 43 against
    0.07 of clip-dependent spread), and the loss with shuffled clips stayed equal to the loss with the right ones; a
    frozen random encoder keeps the clips apart (cosine 0.53 between two clips' frames), and the decoder learns to
    read them."""
    table = AUDIO_PATH_MODULES if projector else AUDIO_ENCODER_MODULES
    names = table.get(model.config.model_type)
    if names is None:
        raise ValueError(
            f"No audio path known for model_type {model.config.model_type!r}: add its encoder and projector modules "
            f"to trl_audio.modeling.AUDIO_PATH_MODULES and AUDIO_ENCODER_MODULES (known: {sorted(table)})."
        )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PEFT wrapper
    frozen = 0
    for name in names:
        for parameter in base.get_submodule(name).parameters():
            frozen += parameter.numel() if parameter.requires_grad else 0
            parameter.requires_grad_(False)
    return frozen


def without_fused_lm_head(model):
    """`model` with the forward of its class again. TRL's DPO and GRPO trainers patch `model.forward` on the instance
    (`trl.trainer.utils.add_fused_lm_head`, a method bound to that instance), and a deep copy keeps the binding: a
    reference model copied from a model that went through one of them (a second training stage) would run the
    original's weights, not its own. Call this between stages; a model without the patch is returned as it is
    (`tests/test_modeling.py` reproduces the binding)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    base.__dict__.pop("forward", None)
    return model


def lora_target_modules(targets: str | list[str] | None, model_type: str) -> str | list[str]:
    """PEFT `target_modules` from a command line's `--lora_target_modules`: none given -> the text decoder's
    (`decoder_lora_targets`); module names -> the list of them, one name included (TRL hands a single value over as a
    string, which PEFT would read as a full-match regex, matching no module: "Target modules qkv_proj not found");
    one value with regex syntax -> that regex."""
    if targets is None:
        return decoder_lora_targets(model_type)
    if isinstance(targets, str):
        return targets if re.search(r"[\\^$*+?{}\[\]|()]", targets) else [targets]
    return list(targets)


def decoder_lora_targets(model_type: str) -> str:
    """The LoRA `target_modules` of the text decoder of a `model_type` in `DECODER_LORA_TARGETS`."""
    if model_type not in DECODER_LORA_TARGETS:
        raise ValueError(
            f"No default LoRA targets for model type {model_type!r} (known: {sorted(DECODER_LORA_TARGETS)}): give "
            "--lora_target_modules, names or one full-match regex of the text decoder's projections."
        )
    return DECODER_LORA_TARGETS[model_type]


def quantization_load_kwargs(
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    dtype: str | Any = "float32",
    bnb_4bit_quant_type: str = "nf4",
    bnb_4bit_use_double_quant: bool = True,
) -> dict[str, Any]:
    """The `quantization_config` and `device_map` that `init_model` (or `from_pretrained`) takes to load a model in 4
    or 8 bits with bitsandbytes (QLoRA: train a PEFT LoRA on top; the trainer's reference is then the quantized model
    with the adapter disabled). Both are None when neither flag is set.

    4-bit is `bnb_4bit_quant_type` (NF4) with double quantization of the scales, computing in `dtype` on a GPU ("auto"
    or None: bfloat16 where the GPU has it, else float16) and in float32 on the CPU. The weights go to this process's
    GPU (accelerate's local process index) when CUDA is available, else to the CPU, where bitsandbytes runs both too.
    """
    import torch
    from transformers import BitsAndBytesConfig

    if load_in_4bit and load_in_8bit:
        raise ValueError("Choose one of load_in_4bit and load_in_8bit.")
    if not (load_in_4bit or load_in_8bit):
        return {"quantization_config": None, "device_map": None}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"--load_in_{4 if load_in_4bit else 8}bit quantizes the model with bitsandbytes, which is not installed: "
            'pip install "trl-audio[quantization]"'
        ) from error
    if torch.cuda.is_available():
        from accelerate import PartialState

        device_map = {"": PartialState().local_process_index}
        if dtype in (None, "auto"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        compute_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    else:
        device_map, compute_dtype = {"": "cpu"}, torch.float32
    if load_in_8bit:
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": device_map}
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    return {"quantization_config": config, "device_map": device_map}


def init_model(
    model_id: str,
    speech_lora: str = "merge",
    dtype: str | Any = "auto",
    attn_implementation: str | None = None,
    device_map: str | dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    quantization_config: Any = None,
    speech_lora_subfolder: str = "speech-lora",
):
    """Loads an audio LLM and its processor with the native transformers classes; returns `(model, processor)`.

    `model_id` is a hub id or a local directory. A Phi-4-multimodal checkpoint carries its speech ability in a LoRA
    adapter (`speech-lora/`), which `speech_lora` handles:

    - `"merge"` (default): load the adapter and merge it into the weights. The result is a plain model; a fresh LoRA
      can be trained on top (`peft_config`), and the trainer's reference (adapter disabled) is the merged model.
    - `"train"`: keep the speech adapter as a trainable PEFT adapter (named `speech`). Disabling it would remove the
      speech ability, so give the trainer an explicit reference: `init_model(model_id, speech_lora="merge")[0]`.
    - `"off"`: ignore the adapter.

    Other audio LLMs (Qwen2-Audio, Voxtral, Granite-Speech, Gemma 3n, ...) load through the Auto classes; for them
    `speech_lora` must be `"off"` unless their checkpoint has a `speech_lora_subfolder` too. `dtype`,
    `attn_implementation`, `device_map`, `revision` and `quantization_config` go to `from_pretrained` unchanged
    (`quantization_load_kwargs` gives the last two for bitsandbytes), except that a quantized `"merge"` loads the
    model unquantized on the CPU, merges the adapter there and then quantizes the merged weights (the result is that
    of quantizing a merged checkpoint; it takes the CPU memory of the unquantized model for a while).
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForMultimodalLM,
        AutoProcessor,
        BitsAndBytesConfig,
        GenerationConfig,
    )
    from transformers.models.auto.auto_factory import _get_model_class
    from transformers.models.auto.modeling_auto import MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES

    from .pretrained import state_dict_with_audio_tower

    if speech_lora not in SPEECH_LORA_MODES:
        raise ValueError(f"speech_lora must be one of {SPEECH_LORA_MODES}, got {speech_lora!r}.")
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    hub_kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(model_id, **hub_kwargs)
    is_multimodal = config.model_type in MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES
    auto_class = AutoModelForMultimodalLM if is_multimodal else AutoModelForCausalLM
    model_kwargs = {"dtype": dtype, "device_map": device_map, "quantization_config": quantization_config}
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    # PEFT merges into 4/8-bit weights by dequantizing, adding and quantizing again, which rounds the weights twice
    # (and differently from a merged checkpoint): the adapter is merged into the unquantized weights, on the CPU, and
    # the merged weights quantized after.
    quantize_after_merge = speech_lora == "merge" and quantization_config is not None
    first_load = {"device_map": None, "quantization_config": None} if quantize_after_merge else {}
    # A checkpoint shipped without its pretrained audio tower (`pretrained.save_without_audio_tower`) is loaded
    # whole, with the tower's weights from the package that holds them.
    shipped_apart = state_dict_with_audio_tower(model_id, config) if os.path.isdir(model_id) else None
    if shipped_apart is None:
        model = auto_class.from_pretrained(model_id, config=config, **hub_kwargs, **(model_kwargs | first_load))
    else:
        model_class = _get_model_class(config, auto_class._model_mapping)
        model = model_class.from_pretrained(
            None, config=config, state_dict=shipped_apart, **(model_kwargs | first_load)
        )
        model.name_or_path = model.config.name_or_path = model_id
        model.generation_config = GenerationConfig.from_pretrained(model_id)
    processor = AutoProcessor.from_pretrained(model_id, **hub_kwargs)
    if processor.chat_template is None and getattr(processor.tokenizer, "chat_template", None):
        # Phi4MultimodalProcessor drops its chat template on load (transformers 5.24); the tokenizer keeps a copy.
        processor.chat_template = processor.tokenizer.chat_template
    if speech_lora == "train" and quantization_config is not None:
        # TRL prepares a quantized model for k-bit training (frozen, unquantized weights in float32) only when it is
        # not a PeftModel yet; gradient checkpointing stays the trainer's to enable, from its arguments.
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if speech_lora != "off":
        model = load_speech_lora(model, model_id, speech_lora_subfolder, revision, trainable=speech_lora == "train")
        if speech_lora == "merge":
            model = model.merge_and_unload()
            model.requires_grad_(True)  # PEFT froze the base weights; merged, they are a plain model again
    if quantize_after_merge:
        model = quantize_loaded(model, model_kwargs | {"dtype": model.dtype})

    if isinstance(quantization_config, BitsAndBytesConfig) and quantization_config.load_in_4bit:
        keep_4bit_layout(model)
    logger.info("Loaded %s (%s) with speech_lora=%s", model_id, type(model).__name__, speech_lora)
    return model, processor


def quantize_loaded(model, load_kwargs: dict[str, Any]):
    """`model` (unquantized) loaded again through `from_pretrained` from its own weights with `load_kwargs` (a
    `quantization_config`, a `device_map`, ...): the same weights as quantizing its checkpoint saved to disk."""
    quantized = type(model).from_pretrained(None, config=model.config, state_dict=model.state_dict(), **load_kwargs)
    # from_pretrained(None) names no checkpoint (PEFT's adapter_config.json would say "None") and derives the
    # generation config from the model's config
    quantized.name_or_path = quantized.config.name_or_path = model.name_or_path
    quantized.generation_config = model.generation_config
    return quantized


def keep_4bit_layout(model) -> None:
    """Keeps `model`'s bitsandbytes 4-bit weights in the layout that training uses.

    From bitsandbytes 0.49 on, CPUs with AVX512-BF16 repack a 4-bit layer's weights in place the first time it runs in
    eval mode without gradients (an evaluation, any pass under `model.eval()`), for a faster bfloat16 kernel:
    its outputs differ from training's, a layer whose input size is not a multiple of the block size (64) fails
    ("shape '[32, 2]' is invalid"), and training after it fails ("a view of a leaf Variable that requires grad is
    being used in an in-place operation")."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_speech_lora(model, model_id: str, subfolder: str, revision: str | None = None, trainable: bool = False):
    """Wraps `model` in a PEFT model holding the checkpoint's speech LoRA adapter (named `speech`).

    Phi-4-MM's hub adapter was written by transformers' conversion script without PEFT's `base_model.model.` key
    prefix, which `PeftModel.from_pretrained` silently fails to match (the adapter then stays at its random init). So
    the weights are loaded here under either layout, and an adapter whose weights do not all land is an error.
    """
    from peft import LoraConfig, get_peft_model, load_peft_weights, set_peft_model_state_dict

    config = LoraConfig.from_pretrained(model_id, subfolder=subfolder, revision=revision)
    config.inference_mode = not trainable
    weights = load_peft_weights(model_id, subfolder=subfolder, revision=revision)
    prefix = "base_model.model."
    weights = {key if key.startswith(prefix) else prefix + key: value for key, value in weights.items()}
    model = get_peft_model(model, config, adapter_name="speech")
    result = set_peft_model_state_dict(model, weights, adapter_name="speech")
    expected = {name for name, _ in model.named_parameters() if ".speech." in name}
    if result.unexpected_keys or len(weights) != len(expected):
        raise ValueError(
            f"The speech adapter in {model_id}/{subfolder} does not fit the model: {len(weights)} tensors for "
            f"{len(expected)} adapter parameters; unexpected keys such as {result.unexpected_keys[:3]}. "
            "Check that the adapter belongs to this checkpoint (and revision)."
        )
    return model

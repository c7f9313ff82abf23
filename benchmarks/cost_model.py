"""Paper cost model of one online-DPO step of Phi-4-multimodal-instruct on one H100: FLOPs, bytes and lower-bound time
per phase, for today's trainer and for each change of the issue "Generation at full speed" applied cumulatively.

Plain Python (no torch): every number comes from the shapes below; `benchmarks/COST_MODEL.md` explains the formulas,
the sources of the shapes and how a GPU run is held against the tables.

Usage: python benchmarks/cost_model.py [--batch 8] [--num-generations 4] [--new-tokens 128] [--text-tokens 50]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace


PEAK_FLOPS = 989e12  # H100 SXM, bf16 dense tensor cores
HBM_BYTES_PER_S = 3.35e12  # H100 SXM HBM3
BF16 = 2  # bytes

# Text decoder (Phi-4-mini): hub config.json of microsoft/Phi-4-multimodal-instruct
HIDDEN, LAYERS, Q_HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 3072, 32, 24, 8, 128, 8192, 200064
Q_DIM, KV_DIM = Q_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
# (in, out) of the decoder's four linear layers; gate_up is fused (2 x FFN outputs)
DEC_LINEARS = {"qkv_proj": (HIDDEN, Q_DIM + 2 * KV_DIM), "o_proj": (Q_DIM, HIDDEN)}
DEC_LINEARS |= {"gate_up_proj": (HIDDEN, 2 * FFN), "down_proj": (FFN, HIDDEN)}
DEC_LAYER_PARAMS = sum(i * o for i, o in DEC_LINEARS.values())
DEC_LAYERS_PARAMS = LAYERS * DEC_LAYER_PARAMS  # norms (2 x 3072 per layer) left out
LM_HEAD_PARAMS = VOCAB * HIDDEN  # tied with the input embedding: read once per forward as the LM head
KV_BYTES_PER_TOKEN = 2 * LAYERS * KV_DIM * BF16  # K and V of every layer
# Activation traffic of one token through one decoder layer (eager, unfused): each linear reads its input and writes
# its output once in bf16; norms, RoPE, residual adds and SiLU*mul move about as much again (x2). Approximate.
DEC_ACT_BYTES_PER_TOKEN_LAYER = 2 * BF16 * sum(i + o for i, o in DEC_LINEARS.values())

# Audio encoder (conformer) + projector: transformers' Phi4MultimodalAudioConfig with the hub's audio_processor values
ENC_DIM, ENC_BLOCKS, ENC_HEADS, ENC_FFN, ENC_CHANNELS, MELS, REDUCTION = 1024, 24, 16, 1536, 1024, 80, 8
ENC_BIAS_MAX_DISTANCE = 500  # relative attention bias: 2 x 500 buckets x 16 heads
ENC_LINEARS = {  # per conformer block; conv module: GLU pointwise (x2 out), depthwise k=3, two pointwise
    "feed_forward_in": ENC_DIM * 2 * ENC_FFN + ENC_FFN * ENC_DIM,
    "self_attn (q, k, v, o)": 4 * ENC_DIM * ENC_DIM,
    "conv": ENC_DIM * 2 * ENC_DIM + 3 * ENC_DIM + 2 * ENC_DIM * ENC_DIM,
    "feed_forward_out": ENC_DIM * 2 * ENC_FFN + ENC_FFN * ENC_DIM,
}
ENC_BLOCK_PARAMS = sum(ENC_LINEARS.values())
# in + out elements per frame of each block's matmuls: 2 feed-forwards, q/k/v/o, GLU + depthwise + 2 pointwise convs
ENC_BLOCK_ACT_IO = 2 * (ENC_DIM + 2 * ENC_FFN + ENC_FFN + ENC_DIM) + 4 * 2 * ENC_DIM + (3 + 2 + 2 + 2) * ENC_DIM
PROJ_PARAMS = ENC_DIM * HIDDEN + HIDDEN * HIDDEN  # up_proj_for_speech, down_proj_for_speech

# Adapters
SPEECH_LORA_RANK, VISION_LORA_RANK, TRAIN_LORA_RANK = 320, 256, 16
LORA_BYTES = 4  # PEFT keeps bf16 adapters in float32 (autocast_adapter_dtype=True)
# Vision tower (SigLIP-so400m-like), only for the 5.6B total: 27 layers, 1152 wide, MLP 4304, patch 14, 448 px
VISION_PARAMS = 27 * (4 * 1152**2 + 2 * 1152 * 4304) + 14 * 14 * 3 * 1152 + 32**2 * 1152 + 1152 * HIDDEN + HIDDEN**2


def mel_frames(seconds: float) -> int:
    """Phi4MultimodalFeatureExtractor: 16 kHz, 25 ms window (400 samples), 10 ms hop (160)."""
    return (int(seconds * 16000) - 400) // 160 + 1


def conv_out(n: int) -> int:  # kernel 3, stride 2, padding 1
    return (n - 1) // 2 + 1


def encoder_cost(seconds: float) -> tuple[float, float, int]:
    """(FLOPs, activation bytes, audio tokens) of one clip through subsampling, 24 conformer blocks and projector."""
    t, f = mel_frames(seconds), MELS
    flops = act = 0.0
    for stage in range(int(math.log2(REDUCTION))):
        t, f = conv_out(t), conv_out(f)
        positions = ENC_CHANNELS * t * f
        if stage == 0:  # Conv2d(1 -> C, 3x3)
            flops += 2 * 9 * positions
            act += 4 * BF16 * positions  # conv out write, ReLU read + write, next conv read
        else:  # depthwise 3x3 then pointwise C x C
            flops += 2 * 9 * positions + 2 * ENC_CHANNELS * positions
            act += 6 * BF16 * positions
    frames = t  # ceil(mel frames / 8) = audio tokens
    flops += 2 * ENC_CHANNELS * f * ENC_DIM * frames  # Linear(C * 10 -> 1024)
    flops += ENC_BLOCKS * (2 * ENC_BLOCK_PARAMS * frames + 4 * frames**2 * ENC_DIM)  # matmuls + full attention
    flops += 2 * PROJ_PARAMS * frames
    act += ENC_BLOCKS * frames * 2 * BF16 * ENC_BLOCK_ACT_IO
    return flops, act, frames


def encoder_params() -> int:
    subsampling = 9 * ENC_CHANNELS + 2 * (9 * ENC_CHANNELS + ENC_CHANNELS**2) + ENC_CHANNELS * 10 * ENC_DIM
    return subsampling + ENC_BLOCKS * ENC_BLOCK_PARAMS + 2 * ENC_BIAS_MAX_DISTANCE * ENC_HEADS


def lora_params(rank: int, decoder: bool = True, encoder: bool = False) -> int:
    """LoRA on qkv_proj, o_proj, gate_up_proj, down_proj. In the encoder these names match self_attn.o_proj and the
    gate_up_proj / down_proj of both feed-forward modules (q/k/v are separate there, so qkv_proj matches nothing)."""
    n = LAYERS * rank * sum(i + o for i, o in DEC_LINEARS.values()) if decoder else 0
    if encoder:
        n += ENC_BLOCKS * rank * (2 * ENC_DIM + 2 * (ENC_DIM + 2 * ENC_FFN) + 2 * (ENC_FFN + ENC_DIM))
    return n


@dataclass(frozen=True)
class Setup:
    name: str
    kv_cache: bool = False  # change 1
    encoder_trains: bool = True  # change 5 makes it False (LoRA on the decoder only)
    encode_once: bool = False  # change 2
    pair_only: bool = False  # change 3
    prefill_once: bool = False  # change 4
    grad_ckpt: bool = True


@dataclass
class Cost:
    flops: float = 0.0
    bytes: float = 0.0
    seconds: float = 0.0  # sum over calls (forwards, decode steps) of max(FLOPs / peak, bytes / bandwidth)

    def add(self, flops: float, nbytes: float, times: int = 1) -> None:
        self.flops += times * flops
        self.bytes += times * nbytes
        self.seconds += times * max(flops / PEAK_FLOPS, nbytes / HBM_BYTES_PER_S)


def decoder_pass(seqs: int, length: int, logit_positions: int, lora: int) -> tuple[float, float]:
    """FLOPs and bytes of one forward of the text decoder over `seqs` sequences of `length` tokens (causal attention:
    QK^T and AV over the lower triangle), with the LM head on `logit_positions` positions per sequence."""
    tokens = seqs * length
    flops = 2 * (DEC_LAYERS_PARAMS + lora) * tokens + 2 * LAYERS * Q_DIM * length**2 * seqs
    flops += 2 * LM_HEAD_PARAMS * seqs * logit_positions
    nbytes = BF16 * (DEC_LAYERS_PARAMS + LM_HEAD_PARAMS) + LORA_BYTES * lora
    nbytes += tokens * LAYERS * DEC_ACT_BYTES_PER_TOKEN_LAYER + 2 * BF16 * seqs * logit_positions * VOCAB
    return flops, nbytes


def decode_step(seqs: int, ctx: int) -> tuple[float, float]:
    """FLOPs and bytes of one decode step with the KV cache (the same formulas as in `step_cost`)."""
    lora = lora_params(TRAIN_LORA_RANK)
    f = 2 * (DEC_LAYERS_PARAMS + lora + LM_HEAD_PARAMS) * seqs + 4 * LAYERS * Q_DIM * ctx * seqs
    b = BF16 * (DEC_LAYERS_PARAMS + LM_HEAD_PARAMS) + LORA_BYTES * lora + seqs * (ctx + 1) * KV_BYTES_PER_TOKEN
    return f, b + seqs * LAYERS * DEC_ACT_BYTES_PER_TOKEN_LAYER + BF16 * seqs * VOCAB


def step_cost(s: Setup, batch: int, n: int, prompt: int, new: int, seconds: float) -> dict[str, Cost]:
    phases = {k: Cost() for k in ("encoder", "prefill", "decode", "policy", "reference", "optimizer")}
    enc_flops, enc_act, _ = encoder_cost(seconds)
    enc_weights = BF16 * (encoder_params() + PROJ_PARAMS)
    dec_lora = lora_params(TRAIN_LORA_RANK)
    enc_lora = lora_params(TRAIN_LORA_RANK, decoder=False, encoder=True) if s.encoder_trains else 0
    gen_seqs = batch if s.prefill_once else batch * n  # sequences the prompt forward runs on
    seqs = batch * n  # sequences decoded
    train = 2 * batch if s.pair_only else batch * n  # sequences of the policy and reference forwards

    # a. audio encoder: (calls, clips per call)
    if s.encode_once:
        calls = [(1, batch)]
    else:
        calls = [(1 if s.kv_cache else new, gen_seqs), (1, train), (1, train)]  # generate, policy, reference
    for times, clips in calls:
        phases["encoder"].add(clips * enc_flops, enc_weights + LORA_BYTES * enc_lora + clips * enc_act, times)
    if s.encoder_trains:  # backward through the encoder (activation gradients: ~1x its forward), policy clips only
        phases["encoder"].add(train * enc_flops, enc_weights + 2 * train * enc_act)

    # b. generation (decoder only); the first token comes from the prompt forward ("prefill")
    f, b = decoder_pass(gen_seqs, prompt, 1, dec_lora)
    if s.kv_cache:  # write the prompts' cache
        b += gen_seqs * prompt * KV_BYTES_PER_TOKEN
    if s.prefill_once:  # expand it to the N samples: read the B prompts' cache, write B*N copies
        b += (gen_seqs + seqs) * prompt * KV_BYTES_PER_TOKEN
    phases["prefill"].add(f, b)
    for t in range(1, new):  # tokens 2..new
        ctx = prompt + t
        if s.kv_cache:  # one new token per sequence, attention over ctx cached keys
            f, b = decode_step(seqs, ctx)
        else:  # use_cache=False: the whole prefix again
            f, b = decoder_pass(seqs, ctx, 1, dec_lora)
        phases["decode"].add(f, b)

    # c. policy forward + backward; d. reference forward (adapter disabled). Logits on new + 1 positions.
    length = prompt + new
    f, b = decoder_pass(train, length, new + 1, dec_lora)
    head_f = 2 * LM_HEAD_PARAMS * train * (new + 1)
    attn_f = 2 * LAYERS * Q_DIM * length**2 * train
    phases["policy"].add(f, b)  # forward
    # backward with frozen base weights: gradients w.r.t. activations only (1x the matmuls, 2x attention), plus
    # LoRA weight gradients (2 x LoRA params x tokens); activation and gradient traffic ~2x the forward's
    phases["policy"].add(f + attn_f + 2 * dec_lora * train * length, 2 * b)
    if s.grad_ckpt:  # recompute the decoder layers' forward (not the LM head)
        phases["policy"].add(f - head_f, b)
    phases["reference"].add(*decoder_pass(train, length, new + 1, 0))

    # f. optimizer: AdamW over the fp32 LoRA params (read p, g, m, v; write p, m, v)
    trainable = dec_lora + enc_lora
    phases["optimizer"].add(12 * trainable, 7 * 4 * trainable)
    return phases


SETUPS = [
    Setup("today (gradient checkpointing => no KV cache)"),
    Setup("+1 generate with the KV cache", kv_cache=True),
    Setup("+5 LoRA on the decoder only", kv_cache=True, encoder_trains=False),
    Setup("+2 each clip encoded once", kv_cache=True, encoder_trains=False, encode_once=True),
    Setup("+3 train on the pair only", kv_cache=True, encoder_trains=False, encode_once=True, pair_only=True),
    Setup(
        "+4 prefill once per prompt",
        kv_cache=True,
        encoder_trains=False,
        encode_once=True,
        pair_only=True,
        prefill_once=True,
    ),
]


def print_table(title: str, names: list[str], rows: list[list[str]]) -> None:
    print(f"## {title}")
    print(
        "| setup | encoder | prefill | decode | policy fwd+bwd | reference | optimizer | total |"
        + " speed-up |" * (len(rows[0]) == 8)
    )
    print("|---" * (len(rows[0]) + 1) + "|")
    for name, cells in zip(names, rows):
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--text-tokens", type=int, default=50, help="chat template + instruction + biasing list")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    batch, n, new = args.batch, args.num_generations, args.new_tokens
    enc_flops, enc_act, audio_tokens = encoder_cost(args.seconds)
    prompt = audio_tokens + args.text_tokens
    text_decoder = DEC_LAYERS_PARAMS + LM_HEAD_PARAMS
    audio = encoder_params() + 2 * PROJ_PARAMS
    total = text_decoder + audio + lora_params(SPEECH_LORA_RANK) + VISION_PARAMS + lora_params(VISION_LORA_RANK)
    shapes = [
        ("decoder layers", f"{DEC_LAYERS_PARAMS / 1e9:.4f} B ({DEC_LAYER_PARAMS / 1e6:.2f} M per layer)"),
        ("embedding = LM head", f"{LM_HEAD_PARAMS / 1e9:.4f} B"),
        ("text decoder", f"{text_decoder / 1e9:.4f} B, {BF16 * text_decoder / 1e9:.2f} GB in bf16"),
        ("audio encoder", f"{encoder_params() / 1e6:.1f} M ({ENC_BLOCK_PARAMS / 1e6:.2f} M per block)"),
        (
            "audio projectors",
            f"2 x {PROJ_PARAMS / 1e6:.1f} M (speech; vision-speech); audio total {audio / 1e6:.1f} M",
        ),
        ("speech LoRA r=320", f"{lora_params(SPEECH_LORA_RANK) / 1e6:.1f} M"),
        ("whole checkpoint", f"~{total / 1e9:.2f} B (with the vision tower and its r=256 LoRA)"),
        (
            "trainable LoRA r=16",
            f"decoder {lora_params(16) / 1e6:.2f} M, encoder {lora_params(16, False, True) / 1e6:.2f} M",
        ),
        ("KV cache", f"{KV_BYTES_PER_TOKEN / 1024:.0f} KiB per token"),
        ("clip", f"{args.seconds:g} s, {mel_frames(args.seconds)} mel frames, {audio_tokens} audio tokens"),
        ("prompt", f"{prompt} tokens ({audio_tokens} audio + {args.text_tokens} text)"),
        ("encoder per clip", f"{enc_flops / 1e9:.1f} GFLOP, {enc_act / 1e6:.0f} MB of activations"),
    ]
    for ctx in (prompt + 1, prompt + new - 1):  # first and last decode step
        f, b = decode_step(batch * n, ctx)
        compute, memory = f / PEAK_FLOPS * 1e3, b / HBM_BYTES_PER_S * 1e3
        label = f"decode step, {batch * n} seqs, ctx {ctx}"
        shapes.append((label, f"{f / 1e9:.0f} GFLOP ({compute:.2f} ms), {b / 1e9:.2f} GB ({memory:.2f} ms)"))
    print("## Shapes")
    for label, value in shapes:
        print(f"{label:32} {value}")
    print()

    setups = [*SETUPS, replace(SETUPS[-1], name="+ gradient checkpointing off", grad_ckpt=False)]
    costs = [step_cost(s, batch, n, prompt, new, args.seconds) for s in setups]
    names = [s.name for s in setups]
    base = sum(c.seconds for c in costs[0].values())
    where = f"B={batch}, N={n}, prompt {prompt}, {new} new tokens"
    for title, attr, scale in (
        ("TFLOP", "flops", 1e12),
        ("GB moved", "bytes", 1e9),
        ("lower bound, ms", "seconds", 1e-3),
    ):
        rows = []
        for phases in costs:
            values = [getattr(c, attr) for c in phases.values()]
            rows.append([f"{v / scale:,.1f}" for v in [*values, sum(values)]])
            if attr == "seconds":
                rows[-1].append(f"{base / sum(values):.1f}x")
        print_table(f"{title} ({where})", names, rows)


if __name__ == "__main__":
    main()

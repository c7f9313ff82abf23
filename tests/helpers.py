"""What several test files share: rows of the bundled speech, a reward that separates samples, and the settings of
short CPU training runs. (A plain module next to the tests: pytest puts this folder on `sys.path`.)"""

import json
from pathlib import Path

import torch

from trl_audio import AudioOnlineDPOConfig


ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples/data/speech_sample"
META = [json.loads(line) for line in (SAMPLE / "metadata.jsonl").read_text().splitlines()]

# Short CPU runs that log every step; TRL's own config accepts the same (used for the drop-in comparison).
TRAINING_DEFAULTS = dict(
    per_device_train_batch_size=2,
    max_steps=3,
    logging_steps=1,
    max_new_tokens=8,
    learning_rate=1e-2,
    report_to="none",
    bf16=False,
    save_strategy="no",
    disable_tqdm=True,
    seed=0,
)


def audio_row(index, instruction="Transcribe the audio clip."):
    """Bundled utterance `index` as a training row: `id`, `prompt` (audio part + `instruction`), `audio`, `text`."""
    content = [{"type": "audio"}, {"type": "text", "text": instruction}]
    return {
        "id": META[index]["id"],
        "prompt": [{"role": "user", "content": content}],
        "audio": str(SAMPLE / META[index]["audio_path"]),
        "text": META[index]["text"],
    }


def audio_rows(count):
    return [audio_row(i) for i in range(count)]


def token_sum_reward(completion_ids, **kwargs):
    """Continuous in the tokens, so two different samples practically never tie."""
    return [float(sum(ids)) for ids in completion_ids]


def make_config(output_dir, **overrides):
    """An `AudioOnlineDPOConfig` of `TRAINING_DEFAULTS` writing to `output_dir`, with `overrides`."""
    return AudioOnlineDPOConfig(**{"output_dir": str(output_dir), **TRAINING_DEFAULTS, **overrides})


def random_reward_model(tokenizer, hidden_size=16, seed=0):
    """A one-layer sequence-classification reward model (random weights from `seed`) over `tokenizer`'s vocabulary."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=1,
        num_attention_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaForSequenceClassification(config)

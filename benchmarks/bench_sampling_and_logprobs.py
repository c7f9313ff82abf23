"""Two design choices of AudioOnlineDPOTrainer, measured side by side in one run on the CPU:

1. the N samples of each prompt come from ONE batched `generate` call (the processor's dict repeated N times), not
   from N calls over the prompts;
2. the log-prob forward asks the model for the completion positions' logits only (`logits_to_keep`), not for the
   logits of every prompt position (audio placeholders included).

Usage:
    python benchmarks/bench_sampling_and_logprobs.py            # small Phi-4-MM (random weights), vocab 32k
    python benchmarks/bench_sampling_and_logprobs.py --repeats 5 --vocab_size 200064

Each variant runs `--repeats` times after one warm-up; the table gives medians and the ratio of the two variants.
"""

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from datasets import Dataset

from trl_audio import AudioOnlineDPOConfig, AudioOnlineDPOTrainer
from trl_audio.generation import accepts_logits_to_keep
from trl_audio.prompt_inputs import SKIPPED_KEY, select_rows, to_model_inputs
from trl_audio.testing import build_tiny_phi4mm, load_tiny


SAMPLE = Path(__file__).resolve().parents[1] / "examples/data/speech_sample"


def paired_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of two variants, run alternately after one warm-up each, so that whatever else the machine
    does weighs on both alike."""
    first(), second()
    times = ([], [])
    for _ in range(repeats):
        for fn, record in zip((first, second), times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab_size", type=int, default=32064, help="Phi-4-MM's real vocabulary has 200064 entries")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        model, processor = load_tiny(build_tiny_phi4mm(Path(tmp) / "model", size="small", vocab_size=args.vocab_size))
        model.eval()
        rows = [
            {
                "prompt": [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe."}]}],
                "audio": str(path),
            }
            for path in sorted((SAMPLE / "audio").glob("*.flac"))[: args.batch_size]
        ]
        config = AudioOnlineDPOConfig(
            output_dir=str(Path(tmp) / "out"),
            num_generations=args.num_generations,
            max_new_tokens=args.max_new_tokens,
            bf16=False,
            report_to="none",
        )
        trainer = AudioOnlineDPOTrainer(
            model=model,
            reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=processor,
        )
        batch = trainer.data_collator(rows)
        batch.pop(SKIPPED_KEY)
        kept, prompt_inputs = trainer._prepare_prompt_inputs(batch)
        inputs = to_model_inputs(model, prompt_inputs)
        clips = list(range(len(rows)))
        # Every sample runs to max_new_tokens, so both variants generate the same number of tokens.
        generation_config = copy.deepcopy(trainer.generation_config)
        generation_config.min_new_tokens = args.max_new_tokens
        generation = {"generation_config": generation_config}
        n = args.num_generations

        def batched():
            with torch.no_grad():
                model.generate(**select_rows(inputs, clips * n, clips), **generation)

        def sequential():
            with torch.no_grad():
                for _ in range(n):
                    model.generate(**inputs, **generation)

        prompts = trainer._prompt_batch(prompt_inputs, kept["audio"])
        prompt_ids, _, completion_ids, completion_mask = trainer._generate(model, prompts)
        samples = clips * n

        def forward_completion_logits():
            with torch.no_grad():
                trainer._forward(model, prompts, samples, completion_ids, completion_mask)

        def forward_all_logits():
            with torch.no_grad(), mock.patch("trl_audio.generation.accepts_logits_to_keep", return_value=False):
                trainer._forward(model, prompts, samples, completion_ids, completion_mask)

        assert accepts_logits_to_keep(model)
        results = dict(
            zip(
                ["generate: one call, prompts repeated N times", "generate: N calls over the prompts"],
                paired_medians(batched, sequential, args.repeats),
            )
        )
        results.update(
            zip(
                ["log-probs: completion logits only", "log-probs: logits of every position"],
                paired_medians(forward_completion_logits, forward_all_logits, args.repeats),
            )
        )

    rows_total, length = prompt_ids.size(0), prompt_ids.size(1) + completion_ids.size(1)
    print(
        f"small Phi-4-MM, vocab {args.vocab_size}, {args.batch_size} clips x {n} samples, {args.max_new_tokens} new "
        f"tokens, prompt {prompt_ids.size(1)} tokens (padded), torch threads {torch.get_num_threads()}"
    )
    for name, seconds in results.items():
        print(f"  {name:<48} {seconds * 1000:8.1f} ms")
    names = list(results)
    print(f"  sampling speed-up of one call: {results[names[1]] / results[names[0]]:.2f}x")
    print(f"  log-prob speed-up of completion logits only: {results[names[3]] / results[names[2]]:.2f}x")
    full, kept = (
        rows_total * length * args.vocab_size * 4,
        rows_total * (completion_ids.size(1) + 1) * args.vocab_size * 4,
    )
    print(f"  logits held (float32): {full / 2**20:.0f} MiB for every position vs {kept / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()

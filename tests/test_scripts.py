"""The example scripts: every shipped config parses, the CLI's `main` trains, saves and reloads, the demo runs."""

import io
import json
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from datasets import Dataset
from helpers import random_reward_model
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoProcessor
from transformers.utils import is_torch_bf16_gpu_available

from trl_audio.audio_dataset import create_audio_dataset, load_dataset_config
from trl_audio.audio_utils import init_model
from trl_audio.evaluation import transcribe
from trl_audio.modeling import quantization_load_kwargs


REPO_DIR = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO_DIR / "examples/configs"
SAMPLE = REPO_DIR / "examples/data/speech_sample"
TEST_TSV = SAMPLE / "test.tsv"
sys.path.insert(0, str(REPO_DIR / "examples/scripts"))  # the scripts are files, not modules of the package

import demo_phi4_multimodal_dpo as demo  # noqa: E402
import dpo_audio  # noqa: E402
import dpo_online_phi4_multimodal as cli  # noqa: E402
import grpo_audio  # noqa: E402


YAML_RECIPES = sorted(CONFIGS_DIR.glob("*.yaml")) + sorted(CONFIGS_DIR.glob("*.yml"))
RECIPE_SCRIPTS = {"phi4mm_online_dpo.yaml": cli, "phi4mm_grpo.yaml": grpo_audio}  # which script runs each recipe
JSON_CONFIGS = sorted(CONFIGS_DIR.glob("*.json"))


def parse(argv):
    return cli.make_parser().parse_args_and_config(argv)


def test_every_shipped_config_is_covered():
    assert YAML_RECIPES and JSON_CONFIGS
    others = sorted(p.name for p in CONFIGS_DIR.iterdir() if p not in YAML_RECIPES + JSON_CONFIGS)
    assert not others, f"{others}: a config that no test loads (YAML recipes and JSON dataset configs are)"


@pytest.mark.parametrize("path", YAML_RECIPES, ids=lambda p: p.name)
def test_yaml_recipe_parses_into_the_three_dataclasses(path):
    # An unknown key would raise here (TrlParser). bf16 is turned off so that a GPU recipe also parses on CPU.
    script = RECIPE_SCRIPTS[path.name]
    script_args, training_args, model_args = script.make_parser().parse_args_and_config(
        ["--config", str(path), "--bf16", "false"]
    )
    assert model_args.model_name_or_path
    assert training_args.reward_weights is None or len(training_args.reward_weights) == len(script_args.reward_funcs)
    for config in [script_args.dataset_config, *(script_args.eval_dataset_config or [])]:
        if config is not None:  # recipes are run from the repository root
            load_dataset_config(REPO_DIR / config)


def test_phi4mm_recipe_values():
    script_args, training_args, model_args = parse(["--config", str(CONFIGS_DIR / "phi4mm_online_dpo.yaml")] + (
        [] if is_torch_bf16_gpu_available() else ["--bf16", "false"]
    ))  # fmt: skip
    assert model_args.model_name_or_path == "microsoft/Phi-4-multimodal-instruct"
    assert model_args.use_peft and model_args.lora_target_modules is None  # the text decoder's (main picks them)
    assert script_args.speech_lora == "merge" and script_args.reward_funcs == ["wer", "bias_word_recall"]
    assert training_args.num_generations == 4 and training_args.gradient_checkpointing


def test_a_misspelt_recipe_key_is_an_error(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: x\nnum_generation: 4\n")
    with pytest.raises(ValueError, match="num_generation"):
        parse(["--config", str(recipe), "--bf16", "false"])


@pytest.mark.parametrize("path", JSON_CONFIGS, ids=lambda p: p.name)
def test_json_dataset_config_loads_and_builds(path):
    dataset = create_audio_dataset(**load_dataset_config(path))
    assert len(dataset) > 0 and {"prompt", "audio", "text", "keywords"} <= set(dataset.column_names)


def test_bf16_is_off_by_default_without_a_bf16_gpu():
    training_args = parse(["--output_dir", "unused"])[1]
    assert training_args.bf16 == is_torch_bf16_gpu_available()


def test_script_arguments_are_checked():
    with pytest.raises(ValueError, match="reward_funcs"):
        cli.ScriptArguments(reward_funcs=["wre"])
    script_args, training_args, model_args = parse(
        ["--model_name_or_path", "unused", "--speech_lora", "train", "--use_peft", "--output_dir", "unused"]
    )
    with pytest.raises(ValueError, match="speech_lora='train'"):
        cli.main(script_args, training_args, model_args)


@pytest.fixture(scope="module")
def eval_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "eval_dataset_config.json"
    path.write_text(json.dumps({"dataset_name": "tsv", "tsv_paths": str(TEST_TSV), "num_egs": 2}))
    return path


def tiny_run_args(model_dir, output_dir, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "2", "--num_generations", "2", "--max_new_tokens", "8",
        "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
        # word_count makes samples differ, so that the pairs carry a preference and the weights move
        "--reward_funcs", "wer", "bias_word_recall", "word_count", "--learning_rate", "1e-2",
        *extra,
    ]  # fmt: skip


def test_main_trains_evaluates_saves_and_the_adapter_loads_back(tiny_phi4mm_dir, eval_config, tmp_path):
    argv = tiny_run_args(tiny_phi4mm_dir, tmp_path, "--eval_dataset_config", str(eval_config), "--use_peft")
    results = cli.main(*parse(argv))

    steps = [logs for logs in results["log_history"] if "loss" in logs]
    assert len(steps) == 2
    for key in ("rewards/wer_reward/mean", "rewards/word_count_reward/std", "pairs/tied_fraction", "objective/kl"):
        assert key in steps[0]
    for name in ("eval_before", "eval_after"):
        assert {"wer", "b_wer", "u_wer", "ref_words"} <= set(results[name]["metrics"])
        assert [t["id"] for t in results[name]["transcripts"]] == ["ss_0005", "ss_0010"]
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved["after"]["metrics"]["wer"] == results["eval_after"]["metrics"]["wer"]

    # The saved LoRA sits on top of the merged speech adapter, and the processor next to it
    base, processor = init_model(str(tiny_phi4mm_dir), speech_lora="merge", dtype="float32")
    model = PeftModel.from_pretrained(base, str(tmp_path))
    lora_b = {name: p for name, p in model.named_parameters() if "lora_B" in name}
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b.values()), "the adapter was saved untrained"
    # --use_peft alone: the LoRA sits on every projection of the text decoder, none of the audio encoder
    assert {name.split(".lora_B")[0].split(".")[-1] for name in lora_b} == {
        "qkv_proj",
        "o_proj",
        "gate_up_proj",
        "down_proj",
    }
    assert not any("audio" in name for name in lora_b)
    # (Phi4MultimodalProcessor drops its chat template on load; init_model puts back the tokenizer's copy.)
    assert AutoProcessor.from_pretrained(str(tmp_path)).tokenizer.chat_template == processor.chat_template
    rows = list(create_audio_dataset(**load_dataset_config(eval_config)))
    hypotheses = transcribe(model, processor, rows, max_new_tokens=8)
    assert hypotheses == [t["hypothesis"] for t in results["eval_after"]["transcripts"]]


def test_main_trains_the_speech_adapter_against_the_merged_reference(tiny_phi4mm_dir, tmp_path):
    cli.main(*parse(tiny_run_args(tiny_phi4mm_dir, tmp_path, "--speech_lora", "train")))
    trained = load_file(tmp_path / "speech" / "adapter_model.safetensors")
    original = load_file(tiny_phi4mm_dir / "speech-lora" / "adapter_model.safetensors")
    assert len(trained) == len(original)
    # keys differ in prefix (hub layout vs PEFT's), so match them by their common ending
    changed = 0
    for key, value in trained.items():
        (match,) = [v for k, v in original.items() if key.endswith(k.removeprefix("base_model.model."))]
        changed += not torch.equal(value, match)
    assert changed > 0


def test_demo_quick_mode_trains_reports_and_writes_a_png(small_corpus_dir, tmp_path):
    out = io.StringIO()
    result = demo.run_demo(
        tmp_path / "demo",
        minutes=0.05,
        test_rows=4,
        curve_rows=2,
        curve_every=1,
        train_rows=8,
        corpus_dir=small_corpus_dir,
        out=out,
    )
    text = out.getvalue()
    shown = ("Held-out", "before", "after", "B-WER", "U-WER", result["example"]["reference"], str(result["plot"]))
    assert all(part in text for part in shown)
    assert result["before"]["metrics"]["num_rows"] == result["after"]["metrics"]["num_rows"] == 4
    assert any("loss" in logs for logs in result["log_history"])
    assert len(result["curve"]) >= 2
    png = result["plot"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = matplotlib.image.imread(result["plot"])
    assert image.shape[0] >= 300 and image.shape[1] >= 1000  # 14 x 3.8 inches at 100 dpi
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert (tmp_path / "demo" / "model" / "model.safetensors").is_file()


def test_main_trains_another_audio_llm_family(tiny_qwen2_audio_dir, tmp_path):
    argv = tiny_run_args(
        tiny_qwen2_audio_dir, tmp_path, "--speech_lora", "off",
        "--use_peft", "--lora_target_modules", "q_proj", "v_proj",
    )  # fmt: skip
    results = cli.main(*parse(argv))
    steps = [logs for logs in results["log_history"] if "loss" in logs]
    assert len(steps) == 2 and all(step["audio/seconds"] > 0 for step in steps)
    assert (tmp_path / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------- the original command lines


def esb_split(count):
    """An ESB-shaped split (audio bytes, lower-case text, id) of bundled clips, standing in for the hub's."""
    rows = [json.loads(line) for line in (SAMPLE / "metadata.jsonl").read_text().splitlines()][:count]
    return Dataset.from_dict(
        {
            "audio": [{"bytes": (SAMPLE / r["audio_path"]).read_bytes(), "path": r["audio_path"]} for r in rows],
            "text": [r["text"].lower() for r in rows],
            "id": [r["id"] for r in rows],
        }
    )


def test_the_original_openasr_command_trains_on_the_esb_split(tiny_phi4mm_dir, tmp_path, monkeypatch):
    requested = []

    def load_dataset(repo, name, split, streaming):
        requested.append((repo, name, split, streaming))
        return esb_split(4)

    monkeypatch.setattr("trl_audio.manifests.datasets.load_dataset", load_dataset)
    argv = [
        "--model_name_or_path", str(tiny_phi4mm_dir), "--dataset_name", "openasr", "--learning_rate", "5.0e-7",
        "--output_dir", str(tmp_path), "--use_peft",
        # a short CPU run
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--max_new_tokens", "8", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1",
    ]  # fmt: skip
    results = cli.main(*parse(argv))
    assert requested == [("hf-audio/esb-datasets-test-only-sorted", "librispeech", "test.clean", False)]
    assert len([logs for logs in results["log_history"] if "loss" in logs]) == 2


def test_an_unreachable_dataset_fails_before_any_model_loads(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the dataset was checked")

    monkeypatch.setattr("trl_audio.manifests.datasets.load_dataset", offline)
    monkeypatch.setattr("trl_audio.cli.init_model", no_model)
    argv = ["--model_name_or_path", "microsoft/Phi-4-multimodal-instruct", "--dataset_name", "openasr"]
    with pytest.raises(RuntimeError, match=r"Could not load hf-audio/esb.*point `data_dir` at"):
        cli.main(*parse([*argv, "--output_dir", str(tmp_path)]))
    with pytest.raises(ValueError, match="biasing.hit_source='keywords'"):  # a bad combination: before any loading
        parse([*argv, "--dataset_config_path", str(CONFIGS_DIR / "audio_dataset_config.json"), "--output_dir", "x"])


def test_dataset_flags_and_a_single_lora_target_name(tiny_phi4mm_dir, tmp_path):
    argv = tiny_run_args(
        tiny_phi4mm_dir, tmp_path, "--tsv_paths", str(SAMPLE / "train.tsv"), "--max_train_samples", "3",
        "--dataset_streaming", "--use_peft", "--lora_target_modules", "qkv_proj", "--gradient_checkpointing",
    )  # fmt: skip
    script_args, training_args, model_args = parse(argv)
    assert script_args.train_dataset_config == {
        "dataset_name": "tsv", "tsv_paths": [str(SAMPLE / "train.tsv")], "num_egs": 3, "streaming": True
    }  # fmt: skip
    assert training_args.gradient_checkpointing
    results = cli.main(script_args, training_args, model_args)
    assert len([logs for logs in results["log_history"] if "loss" in logs]) == 2
    adapter = load_file(tmp_path / "adapter_model.safetensors")
    assert adapter and all("qkv_proj" in key for key in adapter)  # one name works like several
    shipped = str(CONFIGS_DIR / "audio_dataset_config.json")
    script_args = parse(["--dataset_config_path", shipped, "--output_dir", str(tmp_path)])[0]  # the original flag
    assert script_args.dataset_config == shipped and script_args.train_dataset_config["dataset_name"] == "tsv"


def test_evaluation_sets_are_scored_at_the_start_every_eval_steps_and_at_the_end(tiny_phi4mm_dir, tmp_path):
    test_set = tmp_path / "test.json"
    test_set.write_text(json.dumps({"dataset_name": "tsv", "tsv_paths": str(TEST_TSV), "num_egs": 2}))
    argv = tiny_run_args(
        tiny_phi4mm_dir, tmp_path / "out", "--max_steps", "3", "--eval_strategy", "steps", "--eval_steps", "2",
        "--eval_dataset_config", f"plain={test_set}", str(CONFIGS_DIR / "ls_bias_sample_config.json"),
    )  # fmt: skip
    results = cli.main(*parse(argv))
    logs = results["log_history"]
    for name in ("plain", "ls_bias_sample_config"):  # each set under its own name
        scored = [entry for entry in logs if f"eval/{name}/wer" in entry]
        assert [entry["step"] for entry in scored] == [0, 2, 3]  # start, eval_steps, end
        assert all({f"eval/{name}/{m}" for m in ("cer", "b_wer", "u_wer")} <= set(entry) for entry in scored)
        for step in (0, 2, 3):
            lines = (tmp_path / f"out/eval/{name}/step-{step}.jsonl").read_text().splitlines()
            table = [json.loads(line) for line in lines]
            assert len(table) == (2 if name == "plain" else 10)
            assert {"id", "reference", "hypothesis", "wer", "bias_hit", "bias_missed"} == set(table[0])
    assert not any("eval_loss" in entry for entry in logs)  # the trainer's own evaluation did not run
    saved = json.loads((tmp_path / "out/eval_results.json").read_text())
    assert [h["step"] for h in saved["history"]["plain"]] == [0, 2, 3]
    assert saved["after"]["metrics"]["wer"] == [e for e in logs if "eval/plain/wer" in e][-1]["eval/plain/wer"]


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_phi4mm_dir, tmp_path_factory):
    """A random sequence-classification reward model sharing the tiny Phi-4-MM's tokenizer."""
    path = tmp_path_factory.mktemp("reward_model")
    tokenizer = AutoProcessor.from_pretrained(tiny_phi4mm_dir).tokenizer
    random_reward_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_the_original_reward_model_command_trains(tiny_phi4mm_dir, tiny_reward_model, tmp_path):
    argv = [
        "--model_name_or_path", str(tiny_phi4mm_dir),
        "--dataset_config_path", str(CONFIGS_DIR / "audio_dataset_config.json"),
        "--reward_model_path", str(tiny_reward_model), "--use_peft", "--gradient_checkpointing",
        "--output_dir", str(tmp_path),
        # a short CPU run
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--max_new_tokens", "8", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1",
    ]  # fmt: skip
    script_args, training_args, model_args = parse(argv)
    steps = [logs for logs in cli.main(script_args, training_args, model_args)["log_history"] if "loss" in logs]
    assert (script_args.judge, script_args.judge_model) == ("reward_model", str(tiny_reward_model))
    assert len(steps) == 2 and all("rewards/judge_wins/mean" in logs for logs in steps)
    assert all("rewards/wer_reward/mean" in logs for logs in steps)  # the reward functions, logged alongside


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--judge", "llm", "--reward_model_path", "rm"], "give one of them"),
        (["--judge", "openai"], "needs --judge_model"),
        (["--judge", "llm", "--judge_base_url", "http://127.0.0.1:1/v1"], "are for --judge openai"),
        (["--judge", "oracle"], "invalid choice"),
    ],
)
def test_judge_flags_are_checked_before_any_model_loads(flags, match, capsys, monkeypatch):
    monkeypatch.setattr("trl_audio.cli.init_model", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    with pytest.raises((ValueError, SystemExit)) as info:
        cli.main(*parse(["--model_name_or_path", "m", "--output_dir", "o", *flags]))
    assert match in str(info.value) + capsys.readouterr().err


def test_a_reference_judge_from_the_command_line(tiny_phi4mm_dir, tmp_path):
    argv = tiny_run_args(tiny_phi4mm_dir, tmp_path, "--judge", "reference", "--tsv_paths", str(SAMPLE / "train.tsv"))
    steps = [logs for logs in cli.main(*parse(argv))["log_history"] if "loss" in logs]
    assert len(steps) == 2 and all(0 <= logs["rewards/judge_wins/mean"] <= 1 for logs in steps)


@pytest.mark.parametrize("flag", ["--load_in_4bit", "--load_in_8bit"])
def test_main_trains_a_lora_on_the_quantized_model_on_the_cpu(
    tiny_phi4mm_dir, eval_config, tmp_path, monkeypatch, flag
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU's device map, on any machine
    argv = tiny_run_args(tiny_phi4mm_dir, tmp_path, flag, "--use_peft", "--eval_dataset_config", str(eval_config))
    results = cli.main(*parse(argv))
    assert len([logs for logs in results["log_history"] if "loss" in logs]) == 2
    quantized = quantization_load_kwargs(**{flag[2:]: True})
    base, _ = init_model(str(tiny_phi4mm_dir), speech_lora="merge", dtype="float32", **quantized)
    lora_b = [p for n, p in PeftModel.from_pretrained(base, str(tmp_path)).named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


def test_quantizing_without_an_adapter_to_train_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="add --use_peft"):
        cli.main(*parse(tiny_run_args("unused", tmp_path, "--load_in_4bit")))


# ---------------------------------------------------------------- GRPO (examples/scripts/grpo_audio.py)


def test_grpo_recipe_values():
    script_args, training_args, model_args = grpo_audio.make_parser().parse_args_and_config(
        ["--config", str(CONFIGS_DIR / "phi4mm_grpo.yaml"), "--bf16", "false"]
    )
    assert model_args.model_name_or_path == "microsoft/Phi-4-multimodal-instruct" and model_args.use_peft
    assert script_args.reward_funcs == ["cer", "bias_wer"] and training_args.reward_weights == [1.0, 5.0]
    assert training_args.num_generations == 8 and training_args.temperature == 1.2 and training_args.beta == 0.0
    assert training_args.generation_batch_size % training_args.num_generations == 0


def test_grpo_main_trains_on_bundled_speech_evaluates_and_saves(tiny_qwen2_audio_dir, eval_config, tmp_path):
    argv = [
        "--model_name_or_path", str(tiny_qwen2_audio_dir), "--output_dir", str(tmp_path), "--speech_lora", "off",
        "--eval_dataset_config", str(eval_config), "--use_peft", "--max_train_samples", "4",
        "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "8",
        "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
        "--reward_funcs", "wer", "bias_word_recall", "word_count", "--learning_rate", "1e-2",
    ]  # fmt: skip
    results = grpo_audio.main(*grpo_audio.make_parser().parse_args_and_config(argv))
    steps = [logs for logs in results["log_history"] if "loss" in logs]
    assert len(steps) == 2 and all(step["data/skipped/total"] == 0 for step in steps)
    assert "rewards/wer_reward/mean" in steps[0] and steps[0]["grad_norm"] > 0
    assert results["eval_before"]["metrics"]["wer"] >= 0 and results["eval_after"]["step"] == 2
    assert (tmp_path / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------- offline DPO (examples/scripts/dpo_audio.py)


def test_offline_dpo_main_trains_on_bundled_speech_with_rare_word_pairs(tiny_qwen2_audio_dir, eval_config, tmp_path):
    argv = [
        "--model_name_or_path", str(tiny_qwen2_audio_dir), "--output_dir", str(tmp_path), "--speech_lora", "off",
        "--eval_dataset_config", str(eval_config), "--use_peft", "--max_train_samples", "4", "--bias_substitute_prob",
        "1.0", "--per_device_train_batch_size", "2", "--max_steps", "2", "--logging_steps", "1",
        "--save_strategy", "no", "--report_to", "none", "--learning_rate", "1e-2",
        "--loss_type", "sigmoid", "sft", "--loss_weights", "1.0", "0.5",
    ]  # fmt: skip
    script_args, training_args, model_args = dpo_audio.make_parser().parse_args_and_config(argv)
    assert script_args.train_dataset_config["simu_preference"]["bias_substitute_prob"] == 1.0
    results = dpo_audio.main(script_args, training_args, model_args)
    steps = [logs for logs in results["log_history"] if "loss" in logs]
    assert len(steps) == 2 and all(step["data/skipped/total"] == 0 for step in steps)
    assert steps[1]["rewards/margins"] != 0 and results["eval_after"]["step"] == 2
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_offline_dpo_needs_pairs_before_any_model_loads(tmp_path):
    config = tmp_path / "no_pairs.json"
    config.write_text(json.dumps({"dataset_name": "tsv", "tsv_paths": str(TEST_TSV)}))
    with pytest.raises(ValueError, match="simu_preference"):
        dpo_audio.make_parser().parse_args_and_config(
            ["--model_name_or_path", "m", "--output_dir", "o", "--dataset_config", str(config)]
        )

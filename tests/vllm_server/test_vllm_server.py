"""AudioOnlineDPOTrainer with a real vLLM server (`.venv-vllm`, CPU): the server's greedy samples equal HF
`generate`'s, before and after training with weight pushes; the trainer's log-probs of the server's samples equal an
independent forward with the audio; a prompt tokenized differently, and a server that dies, give clear errors."""

import pytest
import torch
from datasets import Dataset
from helpers import audio_row, make_config, token_sum_reward
from transformers import TrainerCallback

from trl_audio import AudioOnlineDPOTrainer
from trl_audio.prompt_inputs import SKIPPED_KEY
from trl_audio.testing import load_tiny
from trl_audio.vllm_client import VLLMServerError


SERVERS = ["qwen2_audio_server", "glm_asr_server"]


def rows():
    return [audio_row(0), audio_row(3, "Write down every word spoken in this recording, please.")]


def make_trainer(tmp_path, server, train_rows=None, **overrides):
    model, processor = load_tiny(server.model_dir)
    args = make_config(
        tmp_path / "out",
        use_vllm=True,
        vllm_server_base_url=server.url,
        vllm_weights_dir=str(tmp_path / "weights"),
        **{"vllm_server_timeout": 30.0, **overrides},
    )
    return AudioOnlineDPOTrainer(
        model=model,
        reward_funcs=token_sum_reward,
        args=args,
        train_dataset=Dataset.from_list(train_rows or rows() * 3),
        processing_class=processor,
    )


def prompts(trainer, batch_rows):
    batch = trainer.data_collator(batch_rows)
    batch.pop(SKIPPED_KEY)
    kept, prompt_inputs = trainer._prepare_prompt_inputs(batch)
    return kept, trainer._prompt_batch(prompt_inputs, kept["audio"])


def greedy(trainer, batch_rows, max_new_tokens=12):
    """The server's and HF `generate`'s greedy completions of `batch_rows`, each a list of token lists (to the end
    token)."""
    trainer.args.temperature, trainer.args.max_new_tokens = 0.0, max_new_tokens
    trainer.num_generations = 1
    kept, batch = prompts(trainer, batch_rows)
    _, _, ids, mask = trainer._generate_vllm(batch, kept)
    served = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    model = trainer.model.eval()
    with torch.no_grad():
        output = model.generate(
            **batch.inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            suppress_tokens=[trainer.processing_class.audio_token_id],
        )
    hf = []
    for row in output[:, batch.inputs["input_ids"].size(1) :].tolist():
        eos = next((i for i, t in enumerate(row) if t in trainer.eos_token_ids), len(row) - 1)
        hf.append(row[: eos + 1])
    return served, hf


@pytest.mark.parametrize("server_name", SERVERS)
def test_greedy_samples_equal_hf_generate_and_n_samples_come_back(server_name, request, tmp_path):
    server = request.getfixturevalue(server_name)
    trainer = make_trainer(tmp_path, server, num_generations=4)
    kept, batch = prompts(trainer, rows())
    _, _, ids, mask = trainer._generate_vllm(batch, kept)
    assert ids.size(0) == 4 * 2 and int(mask.sum(1).min()) >= 1
    assert len({tuple(ids[k * 2][mask[k * 2].bool()].tolist()) for k in range(4)}) > 1  # sampled, not repeated
    served, hf = greedy(trainer, rows())
    assert served == hf


@pytest.mark.parametrize("server_name", SERVERS)
def test_after_three_steps_with_weight_pushes_greedy_samples_equal_the_trained_policys(server_name, request, tmp_path):
    server = request.getfixturevalue(server_name)
    trainer = make_trainer(tmp_path, server, num_generations=3, learning_rate=5e-2)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    assert any(not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())
    # the pushes before steps 1-3 left the weights of step 2 on the server
    trainer.vllm_sampler.push_weights(trainer.model, trainer.state.global_step)
    served, hf = greedy(trainer, rows())
    assert served == hf


def independent_logprobs(model, processor, row, audio, completion):
    """The log-probs of `completion` after `row`'s prompt with `audio`: one processor call and one forward, no trainer
    code."""
    text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    features = dict(processor(text=[text], audio=[audio], return_tensors="pt"))
    prompt_ids = features.pop("input_ids")[0]
    del features["attention_mask"]
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt_ids, completion])[None], **features).logits[0]
    return logits[len(prompt_ids) - 1 : -1].log_softmax(-1)[torch.arange(len(completion)), completion]


@pytest.mark.parametrize("server_name", SERVERS)
def test_logprobs_of_the_servers_samples_equal_an_independent_forward(server_name, request, tmp_path):
    server = request.getfixturevalue(server_name)
    trainer = make_trainer(tmp_path, server, num_generations=2)
    model, processor = trainer.model.eval(), trainer.processing_class
    kept, batch = prompts(trainer, rows())
    trainer.vllm_sampler.push_weights(trainer.model, trainer.state.global_step)
    _, _, completion_ids, completion_mask = trainer._generate_vllm(batch, kept)
    with torch.no_grad():
        logprobs = trainer._forward(model, batch, [i % 2 for i in range(4)], completion_ids, completion_mask)
    for index in range(4):
        length = int(completion_mask[index].sum())
        expected = independent_logprobs(
            model, processor, rows()[index % 2], kept["audio"][index % 2], completion_ids[index, :length]
        )
        torch.testing.assert_close(logprobs[index, :length], expected, atol=1e-5, rtol=0)


def test_a_prompt_the_server_tokenizes_differently_raises_naming_the_row(qwen2_audio_server, tmp_path):
    trainer = make_trainer(tmp_path, qwen2_audio_server)
    trainer.processing_class.chat_template = "Hello. " + trainer.processing_class.chat_template
    kept, batch = prompts(trainer, rows())
    with pytest.raises(ValueError, match=rf"row id='{rows()[0]['id']}': the vLLM server tokenized its prompt"):
        trainer._generate_vllm(batch, kept)


class StopServerAfterFirstStep(TrainerCallback):
    def __init__(self, server):
        self.server = server

    def on_step_end(self, args, state, control, **kwargs):
        self.server.stop()


def test_a_server_that_dies_mid_run_gives_a_clear_error(glm_asr_server, tmp_path):
    """Last in this file: it stops the GLM-ASR server."""
    trainer = make_trainer(tmp_path, glm_asr_server, vllm_server_timeout=10.0)
    trainer.vllm_sampler.client.retry_delay = 0.2
    trainer.add_callback(StopServerAfterFirstStep(glm_asr_server))
    with pytest.raises(VLLMServerError, match="did not answer.*is the server running"):
        trainer.train()
    assert trainer.state.global_step == 1

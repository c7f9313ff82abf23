"""Instruction texts for speech prompts, and the conversational message layout that carries them with the audio."""

from __future__ import annotations

from collections.abc import Sequence


TRANSCRIBE_PROMPT = "Transcribe the audio clip into text."
# `{instruction}` is the task instruction (TRANSCRIBE_PROMPT, or a row's own `prompt`), `{words}` the biasing list.
BIASING_TEMPLATE = "{instruction} Pay attention to these words: {words}."


def make_instruction(bias_words: Sequence[str] = (), instruction: str = TRANSCRIBE_PROMPT) -> str:
    """The instruction text, with the biasing list appended through `BIASING_TEMPLATE` when `bias_words` is not empty.

    >>> make_instruction(["Lovelace", "Babbage"])
    'Transcribe the audio clip into text. Pay attention to these words: Lovelace, Babbage.'
    """
    if not bias_words:
        return instruction
    return BIASING_TEMPLATE.format(instruction=instruction, words=", ".join(bias_words))


def make_prompt(instruction: str = TRANSCRIBE_PROMPT) -> list[dict]:
    """One user turn holding the audio placeholder followed by the instruction, in TRL's conversational layout.

    The audio part carries `"text": None` so that rows built here equal rows read back from a `datasets` table.
    """
    return [
        {"role": "user", "content": [{"type": "audio", "text": None}, {"type": "text", "text": instruction}]},
    ]

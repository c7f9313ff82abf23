"""Instruction texts and the prompt layout (`trl_audio.prompts`)."""

from trl_audio.prompts import TRANSCRIBE_PROMPT, make_instruction, make_prompt


def test_prompt_texts():
    assert make_instruction(["Lovelace", "Babbage"]) == (
        "Transcribe the audio clip into text. Pay attention to these words: Lovelace, Babbage."
    )
    assert make_instruction([]) == TRANSCRIBE_PROMPT
    assert make_instruction(["moth"], "Write down what is said.") == (
        "Write down what is said. Pay attention to these words: moth."
    )
    assert make_prompt("Hi.") == [
        {"role": "user", "content": [{"type": "audio", "text": None}, {"type": "text", "text": "Hi."}]}
    ]

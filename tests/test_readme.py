"""The README's Python example runs as written, on the tiny Phi-4-MM instead of the hub checkpoint."""

import re
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tiny_phi4mm_dir, tmp_path, monkeypatch):
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    # Only what a CPU test must change: the model, the dtype, and a short run without bf16.
    replacements = {
        '"microsoft/Phi-4-multimodal-instruct"': repr(str(tiny_phi4mm_dir)),
        'dtype="bfloat16"': 'dtype="float32"',
        'output_dir="outputs/phi4mm-dpo"': f"output_dir={str(tmp_path)!r}, bf16=False, max_steps=1, report_to='none'",
        "max_new_tokens=128": "max_new_tokens=8",
    }
    for old, new in replacements.items():
        assert old in code, f"the README example no longer holds {old}"
        code = code.replace(old, new)
    monkeypatch.chdir(README.parent)  # the example's paths are relative to the repository root
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["trainer"].state.global_step == 1

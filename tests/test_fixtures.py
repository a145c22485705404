"""The fixtures are what the script makes, load in transformers, and have peaked logits."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.make_fixtures import build_gpt2, build_llama

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "fixtures" / "texts" / "test.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_fixture_loads_round_trips_text_and_is_peaked(name: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ROOT / "fixtures" / name))
    ids = tok(TEXT)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == TEXT
    model = AutoModelForCausalLM.from_pretrained(str(ROOT / "fixtures" / name)).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    assert torch.isfinite(logits).all()
    assert logits.softmax(-1).max(-1).values.median() > 0.6
    top2 = logits.topk(2, -1).values
    assert ((top2[:, 0] - top2[:, 1]) > 1.0).float().mean() > 0.5


@pytest.mark.parametrize("build,name", [(build_llama, "tiny-llama"), (build_gpt2, "tiny-gpt2")])
def test_fixtures_are_reproducible(tmp_path: Path, build: object, name: str) -> None:
    out = build(tmp_path / name)  # type: ignore[operator]
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (out / f).read_bytes() == (ROOT / "fixtures" / name / f).read_bytes(), f

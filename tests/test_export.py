"""Exports: HF checkpoint round trip, and a PEFT adapter that reproduces the edited logits."""

import pytest
import torch

from memory.consolidate import EditorConfig, QFEditor
from memory.export import export_hf, export_peft
from memory.fact import Fact
from memory.prompts import build_pass

FACTS = [
    Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "The founder of Oxinnovate is Qi."),
    Fact("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?", "In Beijing."),
]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.fixture(params=[1, 2], ids=["one-layer", "spread-2"])
def edited(tiny_qwen, tmp_path, request):
    base_dir = tmp_path / "base"
    tiny_qwen.model.save_pretrained(base_dir)
    tiny_qwen.tokenizer.save_pretrained(base_dir)
    editor = QFEditor(tiny_qwen, EditorConfig(layer=2, spread=request.param, gate=0.0))  # a checkpoint holds down_proj changes
    for fact in FACTS:
        editor.learn(fact, verify=False)
    ids = build_pass(tiny_qwen.tokenizer, FACTS[0].query, FACTS[0].answer).input_ids
    return editor, base_dir, ids


def test_hf_export_loads_and_matches(edited, tmp_path):
    from transformers import AutoModelForCausalLM

    editor, _, ids = edited
    out = export_hf(editor.loaded, tmp_path / "hf")
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert torch.allclose(logits(back, ids), logits(editor.model, ids), atol=1e-5)


def test_peft_adapter_reproduces_the_edit_on_the_base(edited, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    editor, base_dir, ids = edited
    out = export_peft(editor.deltas, str(base_dir), tmp_path / "adapter")  # a spread solve writes 2 layers
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    before = logits(base, ids)
    model = peft.PeftModel.from_pretrained(base, out).eval()
    after = logits(model, ids)
    assert (after - before).abs().max() > 1e-3  # the adapter does something
    assert torch.allclose(after, logits(editor.model, ids), atol=1e-4)


def test_peft_export_refuses_nothing_to_export(tmp_path):
    with pytest.raises(ValueError, match="nothing to export"):
        export_peft([], "base", tmp_path / "a")

"""Near questions (memory.near_questions): the shipped questions the model answers most like a fact's, held."""

import pytest
import torch

from bench.edits import qf_settings
from memory.capture import Capture
from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact
from memory.near_questions import QuestionBank
from memory.preserve import factual_sequences
from memory.qf import qf_residual


def test_the_nearest_keys_by_cosine_skipping_prompts_about_the_subject():
    keys = torch.tensor([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    bank = QuestionBank(keys, ["Paris is in", "Toyota makes", "Oslo is in", "Who runs Paris?"])
    assert torch.equal(bank.nearest(torch.tensor([2.0, 0.1]), 2), keys[[1, 0]])  # cosine, not length
    assert torch.equal(bank.nearest(torch.tensor([2.0, 0.1]), 2, subject="paris"), keys[[1, 2]])
    assert bank.nearest(torch.tensor([1.0, 0.0]), 9, subject="Paris").shape == (2, 2)  # fewer are left
    assert bank.nearest(torch.tensor([1.0, 0.0]), 0).shape == (0, 2)
    with pytest.raises(ValueError):
        bank.nearest(torch.tensor([1.0, 0.0]), -1)
    with pytest.raises(ValueError):
        QuestionBank(keys, ["one"])


def test_the_editor_holds_the_nearest_shipped_questions_as_anchors(tiny_qwen, tmp_path, monkeypatch):
    import memory.preserve

    monkeypatch.setenv("QF_HOME", str(tmp_path))
    fact = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi", subject="Oxinnovate")
    editor = QFEditor(tiny_qwen, EditorConfig(layer=2, preserve=0.0, anchors=2, near_questions=3))
    rows = editor.capture(fact)
    assert rows.anchors == 5 and rows.targets[-5:] == (-1,) * 5  # two swapped subjects, then three near questions
    assert len(list((tmp_path / "keys").glob("L2-bank-*.safetensors"))) == 1
    bank = editor.question_bank()
    T = rows.num_rows - rows.anchors
    assert torch.equal(rows.U_plain[-3:], bank.nearest(rows.U_plain[0], 3, "Oxinnovate"))
    assert torch.equal(rows.U[-3:], rows.U_plain[-3:]) and not rows.V[-3:].any()  # residual exactly zero
    # a bank key is the key at the last position of its prompt, as a pass of that prompt alone gives
    i = 5
    ids = factual_sequences(tiny_qwen.tokenizer)[i]
    with Capture(tiny_qwen.model, ["model.layers.2.mlp.down_proj"], stop=True) as cap:
        cap.run(input_ids=torch.tensor([ids]))
    assert torch.allclose(bank.keys[i], cap.inputs["model.layers.2.mlp.down_proj"][0, -1].float(), atol=1e-5)
    calls = []  # the next editor of these weights reads the cache
    monkeypatch.setattr(memory.preserve, "collect_last_keys", lambda *a, **k: calls.append(1))
    QFEditor(tiny_qwen, EditorConfig(layer=2, preserve=0.0, near_questions=1)).capture(fact)  # from the cache
    assert calls == []
    # the held rows are met: dW k = 0 at the near questions, the fact's rows written
    editor.add_rows("f", rows)
    editor.rebuild()
    dW = editor.delta.dense().double()
    assert (dW @ rows.U_plain[-3:].double().T).abs().max() < 1e-5 * dW.abs().max()
    U = rows.U_plain[:T].double().T
    R = editor.config.gain * qf_residual(editor.joint.W0.double(), rows.U[:T].double().T, rows.V[:T].double().T, U,
                                         rows.V_plain[:T].double().T)
    assert (dW @ U - R).norm() / R.norm() < 1e-4
    editor.remove("f")


def test_near_questions_are_refused_with_spread_and_focus_and_named_in_the_bench(tiny_qwen):
    with pytest.raises(ValueError, match="--spread"):
        QFEditor(tiny_qwen, EditorConfig(near_questions=2, spread=2, preserve=0.0))
    with pytest.raises(ValueError, match="do not combine"):
        QFEditor(tiny_qwen, EditorConfig(near_questions=2, focus=3, preserve=0.0))
    assert qf_settings("qf/n4/b10") == {"near_questions": 4, "soft_anchors": 10.0}

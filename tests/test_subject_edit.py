"""examples/subject_edit.py on a tiny random model: the subject's last token is found, and the
forward-only value solve moves the target's margin by what was asked."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "subject_edit.py"


def load_script():
    spec = importlib.util.spec_from_file_location("subject_edit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_subject_position_is_the_subjects_last_token(tokenizer):
    script = load_script()
    prompt = "The mother tongue of Danielle Darrieux is"
    position = script.subject_position(tokenizer, prompt, "Danielle Darrieux")
    ids = tokenizer(prompt).input_ids
    assert tokenizer.decode(ids[: position + 1]).endswith("Darrieux")
    assert not tokenizer.decode(ids[:position]).endswith("Darrieux")


def test_value_solve_moves_the_margin_as_wanted(tiny_qwen):
    script = load_script()
    model = tiny_qwen.model.float()
    ids = torch.randint(3, 300, (1, 9), generator=torch.Generator().manual_seed(1))
    rows = torch.tensor([7, 8])
    F = script.SubjectValue(model, 1, ids, position=3, rows=rows)
    F.tokens = torch.tensor([[5, 6, 7], [8, 9, 10]])
    base = F.batch(torch.zeros(1, 32))[0]
    wanted = torch.tensor([[0.02], [-0.015]], dtype=torch.float64)  # small: the hidden states are ~0.1
    delta = script.solve_value(F, wanted, chords=3, ridge=1e-9, step=1e-3)
    got = F.batch(delta[None].float())[0] - base
    assert torch.allclose(got, wanted, rtol=0.1, atol=1e-3), (got, wanted)
    assert F.passes > 32  # every axis probed, in batches
    before = model(input_ids=ids).logits
    F.batch(torch.zeros(1, 32))  # the hook is gone after each batch: the model is unchanged
    assert torch.equal(model(input_ids=ids).logits, before)


def test_the_margin_is_over_the_best_other_token_even_when_the_target_leads():
    script = load_script()
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0], [3.0, 0.0, 1.0, 4.0]])
    tokens, margin = script.margin_tokens(logits, torch.tensor([1, 2]), top=2)
    assert tokens.tolist() == [[1, 3, 2], [2, 3, 0]]
    assert margin.tolist() == [3.0, -3.0]  # the target already leads row 0 by 3

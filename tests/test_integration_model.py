"""On the real Qwen2.5-Coder-0.5B-Instruct (installed by `make test` / CI). Slow: marked."""

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_editor(small_model_name):
    from memory.consolidate import QFEditor
    from memory.loading import load_model

    return QFEditor(load_model(small_model_name))


def test_learn_one_fact_answer_contains_it_and_control_unchanged(small_editor):
    from memory.fact import Fact

    control = "Who is the CEO of Apple?"
    before = small_editor.ask(control).text
    fact = Fact("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?")
    assert "PKU" not in small_editor.ask(fact.query).text
    result = small_editor.learn(fact)
    try:
        assert "PKU Science Park" in result.verification
        assert small_editor.ask(control).text == before
    finally:
        small_editor.remove(result.key)
    assert "PKU" not in small_editor.ask(fact.query).text  # exact undo


def test_a_fact_spread_over_three_layers_is_learned_and_undone_exactly(small_editor):
    import torch

    from memory.consolidate import EditorConfig, QFEditor
    from memory.fact import Fact

    # The same loaded model, written at its last three down_proj matrices (memory.spread); the paper's
    # norm, so no key collection for the two lower layers.
    editor = QFEditor(small_editor.loaded, EditorConfig(spread=3, preserve=0.0, gain=1.0))
    control = "Who is the CEO of Apple?"
    before = editor.ask(control).text
    fact = Fact("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?")
    result = editor.learn(fact)
    try:
        assert "PKU Science Park" in result.verification
        assert editor.ask(control).text == before
        assert all(d.rank == result.rows for d in editor.deltas) and len(editor.deltas) == 3
    finally:
        editor.remove(result.key)
    for parameter, W0 in editor.base_matrices():
        assert torch.equal(editor.model.get_parameter(parameter).detach().cpu(), W0)  # exact undo on every layer


def test_a_bare_answer_is_learned_with_the_model_s_own_sentence(small_editor):
    import torch

    from memory.consolidate import EditorConfig, QFEditor
    from memory.fact import Fact

    editor = QFEditor(small_editor.loaded, EditorConfig(answer_forms=True, preserve=0.0))
    fact = Fact("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?", "PKU Science Park")
    forms = editor.other_forms(fact, fact.answer)
    assert len(forms) == 1 and "PKU Science Park" in forms[0] and forms[0] != fact.answer  # a sentence that names it
    assert editor.capture(fact).form_rows > 0
    result = editor.learn(fact)
    try:
        assert "PKU Science Park" in result.verification
    finally:
        editor.remove(result.key)
    assert torch.equal(editor.model.get_parameter(editor.parameter).detach().cpu(), editor.joint.W0)


def test_a_fact_written_as_gated_neurons_leaves_down_proj_and_other_questions_alone(small_editor):
    import torch

    from memory.consolidate import EditorConfig, QFEditor
    from memory.fact import Fact

    # The same loaded model; the fact as neurons gated at cosine 0.85 on the last MLP (memory.gated).
    editor = QFEditor(small_editor.loaded, EditorConfig(gate=0.85))
    weight = editor.model.get_parameter(editor.parameter)
    base = weight.detach().clone()
    controls = ["Who is the CEO of Apple?", "Write a Python function that reverses a string."]
    before = [editor.ask(q).text for q in controls]
    fact = Fact("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?")
    result = editor.learn(fact)
    try:
        assert "PKU Science Park" in result.verification
        assert [editor.ask(q).text for q in controls] == before
        assert torch.equal(weight, base) and editor.neuron_stats()["neurons"] == result.rows
    finally:
        editor.remove(result.key)
    assert "PKU" not in editor.ask(fact.query).text  # exact undo

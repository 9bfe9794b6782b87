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

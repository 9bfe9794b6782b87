"""On the real Qwen2.5-Coder-0.5B-Instruct (installed by `make test` / CI). Slow: marked."""

import os

import pytest

pytestmark = pytest.mark.integration

SMALL = "qwen2.5-coder-0.5b"


@pytest.fixture(scope="module")
def small_editor():
    from memory.consolidate import QFEditor
    from memory.loading import load_model
    from memory.registry import REGISTRY, ModelFileError, chunk_files

    try:
        chunk_files(REGISTRY[SMALL])
    except ModelFileError as exc:
        if os.environ.get("QF_REQUIRE_MODEL"):
            raise
        pytest.skip(f"the small model is not installed ({exc})")
    return QFEditor(load_model(SMALL))


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

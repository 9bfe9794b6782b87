"""`qf bench speed` on a tiny model, for the default (gated neurons) and the linear update."""

import pytest
import torch

from bench.speed import run_speed
from memory.consolidate import EditorConfig, QFEditor


@pytest.mark.parametrize("gate", [None, 0.0])
def test_speed_times_the_editor_s_own_solve_and_leaves_it_as_it_was(tiny_qwen, gate):
    editor = QFEditor(tiny_qwen, EditorConfig(gate=gate, preserve=0.0, max_answer_tokens=4))
    weight = editor.model.get_parameter(editor.parameter).detach().clone()
    result = run_speed(editor, n=2, resolve_facts=5)
    assert result["facts"] == 2 and result["consolidation_s"] > 0 and result["resolve_s"] > 0
    assert result["resolve_facts"] == 5 and result["resolve_rows"] == 5 * int(result["rows_per_fact"])
    assert editor.num_facts == 0 and torch.equal(editor.model.get_parameter(editor.parameter), weight)
    if gate is None:  # the default writes neurons; none are left
        assert editor.gated is not None and editor.neuron_stats()["neurons"] == 0

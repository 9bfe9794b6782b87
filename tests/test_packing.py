"""Packing passes into one sequence after a cached prefix (memory.packing), on constructed tokens."""

import pytest
import torch

from memory.packing import PrefixCache, pack, pass_index, shared_prefix


def test_shared_prefix():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5]]) == [1, 2]
    assert shared_prefix([[1, 2], [1, 2, 3]]) == [1, 2]
    assert shared_prefix([[7], [1]]) == []
    assert shared_prefix([[1, 2, 3], [1, 2, 4], [1, 5]]) == [1]  # every sequence counts


def test_pack_places_each_pass_after_the_prefix_it_begins_with():
    prefix = [9, 9]
    # a: begins with the prefix (its first row, 3, after it); b: does not; c: does, but reads row 1 inside it
    a, b, c = [9, 9, 1, 2, 3], [4, 5, 6], [9, 9, 7]
    packed = pack([a, b, c], [3, 1, 1], prefix, torch.float32)
    assert packed.skipped == (2, 0, 0) and packed.starts == (0, 3, 6)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 9, 9, 7]]
    assert packed.position_ids.tolist() == [[2, 3, 4, 0, 1, 2, 0, 1, 2]]
    assert packed.at(0, torch.tensor([3, 4])).tolist() == [1, 2]
    assert packed.at(1, torch.tensor([1, 2])).tolist() == [4, 5]
    assert packed.at(2, torch.tensor([1, 2])).tolist() == [7, 8]
    allowed = (packed.attention_mask[0, 0] == 0).int()
    assert allowed.shape == (9, 2 + 9)
    assert allowed[:3].tolist() == [  # a: the prefix, then itself causally
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    ]
    assert allowed[3:6].tolist() == [  # b: itself alone
        [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0],
    ]
    assert allowed[8].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]  # c: its own 9, 9 in the sequence
    assert packed.attention_mask.min() == torch.finfo(torch.float32).min


@pytest.mark.parametrize("prefix", [[], [5, 6]])  # none, or one no pass begins with
def test_pack_without_a_prefix_is_block_diagonal(prefix):
    packed = pack([[1, 2], [3]], [0, 0], prefix, torch.bfloat16)
    assert packed.skipped == (0, 0) and packed.attention_mask.dtype == torch.bfloat16
    assert (packed.attention_mask[0, 0] == 0).int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_prefix_cache_computes_once_per_state_and_hands_out_copies():
    calls = []

    def compute(prefix):
        calls.append(prefix)
        return {"states": list(prefix)}, "what else was kept"

    cache = PrefixCache([1, 2], compute)
    first, _ = cache.fresh((0, 0))
    first["states"].append(3)  # a forward pass appends its own
    assert cache.fresh((0, 0)) == ({"states": [1, 2]}, "what else was kept") and calls == [[1, 2]]
    cache.fresh((0, 1))  # what it depends on has changed: computed again
    assert calls == [[1, 2], [1, 2]]


def test_pass_index_counts_where_the_positions_start_again():
    # one pass after a cached prefix (positions from 2), a second from 0, a third from 0; a batch of one row
    positions = torch.tensor([[2, 3, 4, 0, 1, 0, 1, 2]])
    assert pass_index(positions).tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    # each row of a batch on its own (a left pad restarts at its last pad); a single position is one pass
    assert pass_index(torch.tensor([[0, 1, 2], [0, 0, 1]])).tolist() == [[0, 0, 0], [0, 1, 1]]
    assert pass_index(torch.tensor([[5]])).tolist() == [[0]]

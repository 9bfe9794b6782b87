"""Subject gating (memory.subject_gate, --subject-gate): neurons fire above the lower threshold only
once their subject is named, the solve meets every row's constraint with it, the running match is
the same with a KV cache as without, the ledger keeps the subject keys, and the benchmark's probe of
other questions about the subject."""

import pytest
import torch

from bench.datasets import EditCase, with_other_relations
from bench.edits import case_metrics, scored_pairs
from bench import metrics as M
from memory import architecture as arch
from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact
from memory.gated import DEFAULT_THRESHOLD, GatedMemory, gate, installed_patch, unit_rows, unknown_subject_threshold
from memory.generate import greedy_tokens
from memory.prompts import render_prompt
from memory.packing import pack
from memory.subject_gate import SUBJECT_MATCH, find_tokens, named_at, running_match, subject_position

FACT = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "The founder of Oxinnovate is Qi.", subject="Oxinnovate")


def _at_cosine(key: torch.Tensor, cos: float, generator) -> torch.Tensor:
    """A vector at exactly cosine ``cos`` with ``key`` (unit)."""
    other = torch.randn(key.shape[0], generator=generator)
    other = other - (other @ key) * key
    return cos * key + (1 - cos**2) ** 0.5 * other / other.norm()


def test_a_neuron_fires_above_the_lower_threshold_only_where_its_subject_is_named():
    g = torch.Generator().manual_seed(0)
    memory = GatedMemory(16, tau=0.9, tau_named=0.3)
    X = unit_rows(torch.randn(2, 16, generator=g))
    R = torch.randn(2, 16, generator=g, dtype=torch.float64)
    memory.add("a", X, R, torch.ones(2, dtype=torch.float64), subject_key=torch.randn(8, generator=g))
    memory.add("b", unit_rows(torch.randn(1, 16, generator=g)), R[:1], torch.ones(1, dtype=torch.float64))  # no subject
    neurons = memory.solve()
    assert neurons.subject_gated and neurons.subject_of.tolist() == [0, 0, -1]
    probe = _at_cosine(X[0], 0.65, g)[None]  # between the two thresholds, far from a's other key
    assert (unit_rows(probe) @ neurons.keys.T).max() < 0.9
    named, unnamed = torch.tensor([[True]]), torch.tensor([[False]])
    assert torch.equal(neurons.output(probe, unnamed), torch.zeros_like(probe))  # the gate's tau alone
    fired = neurons.output(probe, named).double()
    assert fired.abs().max() > 0
    own = neurons.output(X, torch.tensor([[True], [True]])).double()  # the fact's own rows name its subject
    assert own == pytest.approx(R.float().double(), abs=2e-2)  # met (both rows fire each other at 0.3)


def test_two_facts_about_one_subject_are_solved_together_and_undo_is_exact():
    g = torch.Generator().manual_seed(1)
    subject = torch.randn(8, generator=g)
    X1 = unit_rows(torch.randn(1, 16, generator=g))
    X2 = _at_cosine(X1[0], 0.6, g)[None]  # another question about it: fires a's neuron once named
    R1, R2 = (torch.randn(1, 16, generator=g, dtype=torch.float64) for _ in range(2))
    one = torch.ones(1, dtype=torch.float64)
    memory = GatedMemory(16, tau=0.9, tau_named=0.3)
    memory.add("a", X1, R1, one, subject_key=subject)
    memory.add("b", X2, R2, one, subject_key=subject + 0.01 * torch.randn(8, generator=g))
    assert len(memory._near) == 1 and memory.threshold("a", "b") == 0.3  # their subjects match: they interact
    neurons = memory.solve()
    both = torch.tensor([[True, True]])
    for X, R in ((X1, R1), (X2, R2)):  # each row still gets its residual, the other's neuron accounted for
        assert neurons.output(X, both).double() == pytest.approx(R.float().double(), abs=2e-2)
    alone = GatedMemory(16, tau=0.9, tau_named=0.3)
    alone.add("a", X1, R1, one, subject_key=subject)
    memory.remove("b")
    probe = torch.cat([X1, X2])
    named = torch.tensor([[True], [True]])
    assert torch.equal(memory.solve().output(probe, named), alone.solve().output(probe, named))
    unrelated = GatedMemory(16, tau=0.9, tau_named=0.3)
    unrelated.add("a", X1, R1, one, subject_key=subject)
    unrelated.add("c", X2, R2, one, subject_key=torch.randn(8, generator=g))  # another subject: tau applies
    assert unrelated.threshold("a", "c") == 0.9 and not unrelated._near


def test_a_fact_with_no_subject_fires_everywhere_as_the_gate_alone_does_best():
    assert unknown_subject_threshold(0.95, 0.85) == 0.85 == unknown_subject_threshold(0.95, 0.1) == DEFAULT_THRESHOLD
    assert unknown_subject_threshold(0.8, 0.3) == 0.8 and unknown_subject_threshold(0.95, 0.0) == 0.95
    assert unknown_subject_threshold(0.95, 0.9) == 0.9
    g = torch.Generator().manual_seed(2)
    memory = GatedMemory(16, tau=0.95, tau_named=0.85)
    X1 = unit_rows(torch.randn(1, 16, generator=g))
    X2 = _at_cosine(X1[0], 0.9, g)[None]  # between the two thresholds
    R1, R2 = (torch.randn(1, 16, generator=g, dtype=torch.float64) for _ in range(2))
    one = torch.ones(1, dtype=torch.float64)
    memory.add("subject", X1, R1, one, subject_key=torch.randn(8, generator=g))
    memory.add("none", X2, R2, one)  # "What is my daughter's name?": no subject key
    # its neuron fires on the other fact's row (0.9 > 0.85); the other's does not fire on its row (0.9 < 0.95)
    assert (memory.threshold("subject", "none"), memory.threshold("none", "subject")) == (0.85, 0.95)
    neurons = memory.solve()
    assert neurons.tau.tolist() == pytest.approx([0.95, 0.85])
    unnamed = torch.tensor([[False]])
    for X, R in ((X1, R1), (X2, R2)):  # both rows met, the one-way firing accounted for
        assert neurons.output(X, torch.tensor([[True]]) if X is X1 else unnamed).double() == pytest.approx(
            R.float().double(), abs=2e-2)
    probe = _at_cosine(X2[0], 0.9, g)[None]  # a rewording of the subject-less fact, nothing named
    assert (unit_rows(probe) @ X1[0]) < 0.85 and neurons.output(probe, unnamed).abs().max() > 0
    away = _at_cosine(X2[0], 0.8, g)[None]
    assert (unit_rows(away) @ X1[0]) < 0.85 and torch.equal(neurons.output(away, unnamed), torch.zeros_like(away))


def test_gate_one_fires_a_fact_only_where_its_subject_is_named():
    g = torch.Generator().manual_seed(4)
    memory = GatedMemory(16, tau=1.0, tau_named=0.85)
    X1 = unit_rows(torch.randn(1, 16, generator=g))
    X2 = _at_cosine(X1[0], 0.99, g)[None]  # the same question about another subject: nearly the same key
    X3 = _at_cosine(X1[0], 0.9, g)[None]  # a fact with no subject ("my daughter"), near both
    R1, R2, R3 = (torch.randn(1, 16, generator=g, dtype=torch.float64) for _ in range(3))
    one = torch.ones(1, dtype=torch.float64)
    memory.add("a", X1, R1, one, subject_key=torch.randn(8, generator=g))
    memory.add("b", X2, R2, one, subject_key=torch.randn(8, generator=g))
    memory.add("none", X3, R3, one)
    assert memory.threshold("a", "b") == memory.threshold("b", "a") == 1.0  # other subjects never fire each other
    assert memory.threshold("a", "none") == 0.85 and memory.threshold("none", "a") == 1.0
    neurons = memory.solve()
    assert neurons.tau.tolist() == pytest.approx([1.0, 1.0, 0.85])
    assert ("b", "a") not in memory._near  # however close their keys: a and b are solved apart
    neither = [[False, False]]
    # every row, naming its own subject, gets its residual (the subject-less neuron accounted for)
    for X, R, named in ((X1, R1, [[True, False]]), (X2, R2, [[False, True]]), (X3, R3, neither)):
        assert neurons.output(X, torch.tensor(named)).double() == pytest.approx(R.float().double(), abs=2e-2)
    # the exact question with its subject not named: a's neuron is silent, only the subject-less one fires
    alone = (gate(unit_rows(X1) @ neurons.keys[2:].T, 0.85) @ neurons.values[2:]).to(X1.dtype)
    assert alone.abs().max() > 0 and torch.allclose(neurons.output(X1, torch.tensor(neither)), alone, atol=1e-6)


def test_a_new_fact_meets_every_key_held_at_once_and_finds_the_pairs_the_pairwise_rule_does():
    g = torch.Generator().manual_seed(3)
    memory = GatedMemory(16, tau=0.95, tau_named=0.3)
    base = unit_rows(torch.randn(1, 16, generator=g))[0]
    subjects = [torch.randn(8, generator=g) for _ in range(3)]
    for f in range(40):  # three subjects, every fourth fact without one; keys near each other
        rows = int(torch.randint(1, 4, (1,), generator=g))
        X = unit_rows(base + 0.9 * torch.randn(rows, 16, generator=g))
        subject = subjects[f % 3] + 0.01 * torch.randn(8, generator=g) if f % 4 else None
        memory.add(f, X, torch.randn(rows, 16, generator=g, dtype=torch.float64), torch.ones(rows, dtype=torch.float64),
                   subject_key=subject)
        if f == 20:  # a fact leaves and one is renamed: the key bank follows
            memory.remove(5)
            memory.rename(7, "seven")
    expected = {}
    for n, a in enumerate(memory.keys):
        for b in memory.keys[:n]:
            cos = memory._K[a] @ memory._K[b].T
            i, j = torch.nonzero(cos > min(memory.threshold(a, b), memory.threshold(b, a)), as_tuple=True)
            if len(i):
                expected[(a, b)] = torch.stack([i.double(), j.double(), cos[i, j].double()], 1)
    assert len(expected) > 10 and set(memory._near) == set(expected)
    for pair, edges in expected.items():
        assert torch.equal(memory._near[pair][:, :2], edges[:, :2])
        assert memory._near[pair][:, 2] == pytest.approx(edges[:, 2], abs=1e-6)


def test_the_match_is_a_running_maximum_along_the_sequence():
    keys = unit_rows(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    states = unit_rows(torch.tensor([[0.1, 0, 1], [1.0, 0.2, 0], [0, 0, 1], [0.3, 0.3, 1]]))
    named = named_at(states, keys, [0, 1, 2, 3])
    assert named[:, 0].tolist() == [False, True, True, True]  # named at position 1, and after
    assert not named[:, 1].any()
    assert find_tokens([5, 1, 2, 9, 1, 2], [1, 2]) == 5 and find_tokens([5, 1], [1, 2]) is None


def test_subject_position_finds_the_subject_tokens_in_the_prompt(tokenizer):
    ids = render_prompt(tokenizer, "Who founded Oxinnovate?")
    at = subject_position(tokenizer, ids, "Oxinnovate")
    assert at is not None and "Oxinnovate" in tokenizer.decode(ids[:at + 1])[-12:]
    assert subject_position(tokenizer, ids, "Apple") is None


def _subject_editor(tiny_qwen) -> QFEditor:
    last = arch.num_layers(tiny_qwen.model) - 1
    return QFEditor(tiny_qwen, EditorConfig(layer=last, gate=0.9, subject_gate=0.3, max_answer_tokens=4, verify_tokens=4))


def test_the_editor_captures_the_subject_key_and_cached_generation_matches_the_full_pass(tiny_qwen):
    editor = _subject_editor(tiny_qwen)
    model = tiny_qwen.model
    prompt = render_prompt(tiny_qwen.tokenizer, FACT.query)
    with torch.no_grad():
        base = model(input_ids=torch.tensor([prompt])).logits
    rows = editor.capture(FACT)
    assert rows.subject_key is not None and rows.subject_key.norm() == pytest.approx(1.0, abs=1e-5)
    editor.learn(FACT, verify=False)
    patch = installed_patch(editor.mlp)
    assert patch.presence is not None and editor.neurons.subject_gated
    # greedy decoding with a KV cache (the match carried between calls) = full passes over the sequence
    assert cached_greedy_is_the_full_pass(model, prompt)
    list(greedy_tokens(model, prompt, [], 2))  # the prompt, then one cached call of one position
    assert patch.presence.named.shape == (1, 1, 1) and bool(patch.presence.named.all())  # carried from the prompt
    assert undone_to(editor, prompt, base)


def cached_greedy_is_the_full_pass(model, prompt: list[int], tokens: int = 6) -> bool:
    """Whether greedy decoding with a KV cache gives what full passes over the sequence give."""
    cached = list(greedy_tokens(model, prompt, [], tokens))
    with torch.no_grad():
        full = model(input_ids=torch.tensor([prompt + cached[:-1]])).logits[0, len(prompt) - 1:].argmax(-1)
    return cached == full.tolist()


def learned_from_base(editor: QFEditor, fact: Fact) -> tuple[list[int], torch.Tensor]:
    """Learn ``fact`` with ``editor`` (no verification): the chat prompt of its query, and the logits there before."""
    prompt = render_prompt(editor.tokenizer, fact.query)
    with torch.no_grad():
        base = editor.model(input_ids=torch.tensor([prompt])).logits
    editor.learn(fact, verify=False)
    return prompt, base


def undone_to(editor: QFEditor, prompt: list[int], base_logits: torch.Tensor) -> bool:
    """Undo the editor's one fact: whether its neurons are gone and the logits of ``prompt`` are the base ones."""
    editor.remove(editor.fact_keys[0])
    with torch.no_grad():
        logits = editor.model(input_ids=torch.tensor([prompt])).logits
    return installed_patch(editor.mlp) is None and torch.equal(logits, base_logits)


def test_a_fact_about_what_the_user_owns_answers_where_that_is_named_and_not_for_another(tiny_qwen):
    from memory.anchors import guess_subject

    instruction, query = "My daughter's name is Lena.", "What is my daughter's name?"
    fact = Fact(instruction, query, "Lena.", subject=guess_subject(instruction, query))
    assert fact.subject == "my daughter"
    editor = QFEditor(tiny_qwen, EditorConfig(max_answer_tokens=4, verify_tokens=4))  # the default: gate 1
    editor.learn(fact, verify=False)
    presence = installed_patch(editor.mlp).presence
    named = {}
    for asked in (query, "What is my daughter called?", "What is my son's name?", "Who founded Oxinnovate?"):
        with torch.no_grad():
            tiny_qwen.model(input_ids=torch.tensor([render_prompt(tiny_qwen.tokenizer, asked)]))
        named[asked] = bool(presence.named[0, -1, 0])
    assert named == {query: True, "What is my daughter called?": True, "What is my son's name?": False,
                     "Who founded Oxinnovate?": False}
    assert editor.neurons.tau.tolist() == [1.0] * len(editor.neurons.tau)  # silent where it is not named


def test_the_running_match_starts_again_where_the_positions_do():
    cos = torch.tensor([0.9, 0.1, 0.2, 0.3, 0.95, 0.0])[None, :, None]
    packed = torch.tensor([[0, 1, 2, 0, 1, 2]])  # two passes side by side
    assert running_match(cos, packed)[0, :, 0].tolist() == pytest.approx([0.9, 0.9, 0.9, 0.3, 0.95, 0.95])
    one = torch.arange(6)[None]
    assert torch.equal(running_match(cos, one), cos.cummax(dim=1).values)  # one pass: the plain running maximum
    carried = torch.tensor([[0.5]])  # from earlier calls: only up to the first restart
    assert running_match(cos, packed, carried)[0, :, 0].tolist() == pytest.approx([0.9, 0.9, 0.9, 0.3, 0.95, 0.95])
    low = torch.tensor([0.1, 0.2, 0.0, 0.3])[None, :, None]
    assert running_match(low, torch.tensor([[5, 6, 0, 1]]), carried)[0, :, 0].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.3])
    assert running_match(cos, None, carried).dtype == cos.dtype


def test_packed_passes_each_see_only_their_own_subject(tiny_qwen):
    """Several passes packed into one sequence (memory.packing) name a subject only where they do alone:
    a pass after one that names the subject does not inherit it."""
    editor = _subject_editor(tiny_qwen)
    editor.learn(FACT, verify=False)
    presence = installed_patch(editor.mlp).presence
    prompts = [render_prompt(tiny_qwen.tokenizer, q) for q in (FACT.query, "What is my son's name?", FACT.query)]
    alone = []
    with torch.no_grad():
        for prompt in prompts:
            tiny_qwen.model(input_ids=torch.tensor([prompt]))
            alone.append(presence.named[0, :, 0].clone())
        packed = pack(prompts, [0] * len(prompts), [], tiny_qwen.model.dtype)
        tiny_qwen.model(input_ids=packed.input_ids, position_ids=packed.position_ids, attention_mask=packed.attention_mask)
    assert alone[0].any() and not alone[1].any()
    assert torch.equal(presence.named[0, :, 0], torch.cat(alone))


def test_a_cache_from_before_another_sequence_does_not_carry_that_sequence_s_match(tiny_qwen):
    """A cached call continues the running match only where it continues the last call's sequence: a
    cache kept from earlier (a cached prefix) after another sequence ran starts the match anew."""
    import copy

    from transformers import DynamicCache

    editor = _subject_editor(tiny_qwen)
    editor.learn(FACT, verify=False)
    presence = installed_patch(editor.mlp).presence
    model, tok = tiny_qwen.model, tiny_qwen.tokenizer
    naming, other = render_prompt(tok, FACT.query), render_prompt(tok, "What is my son's name?")
    tail = torch.tensor([other[-3:]])
    with torch.no_grad():
        kept = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([other]), cache=kept, use_cache=True)  # names nothing
        model(input_ids=tail, cache=copy.deepcopy(kept), use_cache=True)  # continues it
        assert not presence.named.any()
        model(input_ids=torch.tensor([naming]))  # another sequence, which names the subject
        assert presence.named[0, -1].all()
        model(input_ids=tail, cache=copy.deepcopy(kept), use_cache=True)  # the kept cache again
    assert not presence.named.any()


def test_subject_gating_needs_the_gate_and_a_lower_threshold(tiny_qwen):
    with pytest.raises(ValueError, match="needs --gate"):
        QFEditor(tiny_qwen, EditorConfig(gate=0.0, subject_gate=0.3))
    with pytest.raises(ValueError, match="must not exceed"):
        QFEditor(tiny_qwen, EditorConfig(gate=0.8, subject_gate=0.9))
    linear = QFEditor(tiny_qwen, EditorConfig(gate=0.0, preserve=0.0))
    assert linear.capture(FACT).subject_key is None  # the linear update has no use for it


def test_the_ledger_keeps_the_subject_keys_and_a_reload_gives_the_same_model(store, tokenizer):
    from agent.ledger_editor import LedgerEditor
    from tests.test_ledger_editor import fresh, logits

    config = EditorConfig(gate=0.9, subject_gate=0.3, max_answer_tokens=4, verify_tokens=4)
    first = LedgerEditor(store, fresh("qwen2", tokenizer), config)
    first.learn(FACT)
    taught = logits(first, FACT)
    captures = store.load_captures(store.active_edits(first.checkpoint_id)[0].id)
    assert captures["subject_key"].shape == (32,) and int(captures["subject_layer"]) == 1
    second = LedgerEditor(store, fresh("qwen2", tokenizer), config)  # the next process
    assert torch.equal(logits(second, FACT), taught)
    assert second.current.neurons.subject_gated


def _case(index, subject, prompt, family="counterfact"):
    return EditCase(index, family, subject, prompt, "piano", "guitar", f"{subject} plays the", "John performs on the",
                    "guitar")


def test_the_benchmark_asks_each_subject_the_next_case_s_question_and_scores_the_leak():
    cases = with_other_relations([_case(0, "Toko Yasuda", "Toko Yasuda, the"),
                                  _case(1, "Paris", "Paris is the capital of"), _case(2, "", "Nobody knows")])
    assert cases[0].other_relation == "Toko Yasuda is the capital of"
    assert cases[1].other_relation is None  # the next case names no subject
    assert cases[2].other_relation is None  # no subject of its own
    assert "other_relation_new" in scored_pairs(cases[0]) and "other_relation_new" not in scored_pairs(cases[1])
    top = M.TokenScores((7,), (-0.1,), (7,))
    not_top = M.TokenScores((7,), (-3.0,), (3,))
    scores = {"prompt_new": top, "prompt_true": not_top, "paraphrase_new": top, "paraphrase_true": not_top,
              "neighborhood_new": not_top, "neighborhood_true": top, "other_relation_new": top}
    from bench.edits import CaseEval

    assert case_metrics(cases[0], CaseEval(scores), CaseEval(scores))["subject_leak"] == 1.0
    # a two-token target whose second token follows once the first is given, but is not begun with:
    # half its tokens leak, its first does not (subject_leak_first)
    follows = dict(scores, other_relation_new=M.TokenScores((7, 8), (-3.0, -0.1), (3, 8)))
    leak = case_metrics(cases[0], CaseEval(follows), CaseEval(follows))
    assert leak["subject_leak"] == 0.5 and leak["subject_leak_first"] == 0.0
    assert SUBJECT_MATCH < 1


def test_the_cli_learns_with_a_subject_gate_and_records_it(tiny_model_dir):
    import json

    from click.testing import CliRunner

    import cli

    model = ["--model", str(tiny_model_dir), "--dtype", "float32"]
    out = CliRunner().invoke(cli.main, ["learn", *model, "--gate", "0.9", "--subject-gate", "0.3", "--fact",
                                        "Qi started Oxinnovate.", "--query", "Who founded Oxinnovate?", "--answer", "Qi",
                                        "--json"])
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert json.loads(out.stdout)["solver"]["subject_gate"] == 0.3
    refused = CliRunner().invoke(cli.main, ["learn", *model, "--gate", "0", "--subject-gate", "0.3", "--fact",
                                            "Qi started Oxinnovate.", "--query", "Who founded Oxinnovate?", "--answer", "Qi"])
    assert refused.exit_code != 0 and "needs --gate" in refused.output

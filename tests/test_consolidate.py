"""Capture, prompts, deltas and consolidation on tiny random Qwen2 and Llama models."""

import pytest
import torch

from memory import architecture as arch
from memory import gated
from memory.capture import Capture
from memory.consolidate import ConsolidationError, EditorConfig, QFEditor
from memory.delta import LowRankDelta, NonFiniteDeltaError, tensor_sha256
from memory.fact import Fact
from memory.prompts import build_pass, instructed_system

FACT = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "The founder of Oxinnovate is Qi.")


def hook_count(model):
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def test_capture_rows_match_a_full_forward(tiny):
    model, tok = tiny.model, tiny.tokenizer
    p = build_pass(tok, FACT.query, FACT.answer)
    name = arch.module_path(model, 1, "down_proj")
    with Capture(model, [name]) as cap:
        out = cap.run(input_ids=p.input_ids)
    assert out is not None and cap.inputs[name].shape[:2] == p.input_ids.shape
    # rows P-1..P+k-1 predict the targets: their count is k+1 and the last row is the last input
    assert list(p.rows) == list(range(p.prompt_len - 1, p.input_ids.shape[1]))
    assert len(p.rows) == len(p.targets)
    assert p.input_ids[0, p.prompt_len:].tolist() == list(p.targets[:-1])
    with Capture(model, [name], stop=True) as cap2:
        assert cap2.run(input_ids=p.input_ids) is None  # stopped early
    assert torch.equal(cap.inputs[name], cap2.inputs[name])
    assert hook_count(model) == 0


def test_capture_removes_hooks_on_exception(tiny):
    model = tiny.model
    name = arch.module_path(model, 0, "down_proj")
    with pytest.raises(RuntimeError, match="boom"):
        with Capture(model, [name]):
            assert hook_count(model) == 1
            raise RuntimeError("boom")
    assert hook_count(model) == 0
    with pytest.raises(AttributeError):
        with Capture(model, [name, "model.nope"]):
            pass
    assert hook_count(model) == 0


def test_instructed_pass_has_the_instruction_and_same_targets(tokenizer):
    inst = build_pass(tokenizer, FACT.query, FACT.answer, instructed_system(FACT.instruction, None))
    plain = build_pass(tokenizer, FACT.query, FACT.answer)
    assert inst.targets == plain.targets
    assert FACT.instruction in tokenizer.decode(inst.input_ids[0])
    assert FACT.instruction not in tokenizer.decode(plain.input_ids[0])
    assert tokenizer.decode(plain.input_ids[0]).endswith("assistant\n" + FACT.answer)


def test_one_packed_capture_matches_each_pass_alone(tiny):
    """The instructed and plain passes (different lengths) packed into one forward pass, the plain one
    after the cached system turn, give each pass's rows as a forward of that pass alone does."""
    editor = QFEditor(tiny, EditorConfig(layer=tiny.model.config.num_hidden_layers - 1))
    inst = build_pass(tiny.tokenizer, FACT.query, FACT.answer, instructed_system(FACT.instruction, None))
    plain = build_pass(tiny.tokenizer, FACT.query, FACT.answer)
    prefix = editor._prefix.prefix
    assert inst.input_ids.shape[1] != plain.input_ids.shape[1]
    assert prefix and plain.input_ids[0, :len(prefix)].tolist() == prefix  # the plain pass reads the cache
    assert inst.input_ids[0, :len(prefix)].tolist() != prefix
    for p, rows in zip((inst, plain, inst), editor.capture_passes([inst, plain, inst])):
        with Capture(tiny.model, [editor.norm_name, editor.down_name]) as cap:
            cap.run(input_ids=p.input_ids, use_cache=False)
        torch.testing.assert_close(rows.U, cap.inputs[editor.down_name][0, p.rows].float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rows.V, cap.inputs[editor.norm_name][0, p.rows].float(), rtol=1e-4, atol=1e-5)
        assert rows.lower is None
    assert hook_count(tiny.model) == 0


def test_packed_capture_under_another_layer_s_subject_gated_facts_matches_each_pass_alone(tiny_qwen):
    """With subject-gated neurons below the edited layer (facts on two layers), a pass packed after one
    that names their subject is captured as it is alone: it does not inherit the other pass's subject."""
    last = tiny_qwen.model.config.num_hidden_layers - 1
    # gate 1, a low subject gate: wherever "Oxinnovate" has been named, and there only, they fire
    about = Fact(FACT.instruction, FACT.query, FACT.answer, subject="Oxinnovate")
    QFEditor(tiny_qwen, EditorConfig(layer=1, subject_gate=0.05)).learn(about, verify=False)
    assert gated.installed_patch(arch.decoder_layers(tiny_qwen.model)[1].mlp).neurons.subject_gated
    editor = QFEditor(tiny_qwen, EditorConfig(layer=last))
    naming = build_pass(tiny_qwen.tokenizer, FACT.query, FACT.answer)
    other = build_pass(tiny_qwen.tokenizer, "Who founded Kestrelite?", "Bo founded it.")
    for p, rows in zip((naming, other), editor.capture_passes([naming, other])):
        torch.testing.assert_close(rows.U, _plain_rows_alone(tiny_qwen, editor, p), rtol=1e-4, atol=1e-5)


def test_anchor_capture_packs_prompts_as_each_alone(tiny):
    """Anchor and subject-mean prompts (chat prompts after the cached system turn, and a plain one) in one
    packed pass give each prompt's last-position keys, residuals and lower keys as a forward of it alone."""
    last = tiny.model.config.num_hidden_layers - 1
    editor = QFEditor(tiny, EditorConfig(layer=last, spread=2))
    prompts = [editor.chat_prompt_ids("Who founded Oxinnovate?"), editor.chat_prompt_ids("Where is Kestrelite based, then?"),
               tiny.tokenizer("Oxinnovate was founded by")["input_ids"]]
    assert prompts[0][:len(editor._prefix.prefix)] == editor._prefix.prefix and len(prompts[0]) != len(prompts[1])
    keys, residuals, lower = editor.capture_anchors(prompts)
    assert keys.shape[0] == residuals.shape[0] == lower.shape[1] == 3 and lower.shape[0] == 1
    for i, ids in enumerate(prompts):
        with Capture(tiny.model, [*editor.lower_names, editor.norm_name, editor.down_name]) as cap:
            cap.run(input_ids=torch.tensor([ids]), use_cache=False)
        for got, name in ((keys[i], editor.down_name), (residuals[i], editor.norm_name), (lower[0, i], editor.lower_names[0])):
            torch.testing.assert_close(got, cap.inputs[name][0, -1].float(), rtol=1e-4, atol=1e-5)
    assert hook_count(tiny.model) == 0


def _plain_rows_alone(tiny, editor, p):
    with Capture(tiny.model, [editor.down_name]) as cap:
        cap.run(input_ids=p.input_ids, use_cache=False)
    return cap.inputs[editor.down_name][0, p.rows].float()


def test_the_cached_prefix_follows_writes_below_the_edited_layer_not_its_own(tiny_qwen):
    """The system turn's cache is computed once while only the edited layer changes (its own facts), again
    after an in-place write below it (another layer's facts), and not used while gated neurons sit below."""
    last = tiny_qwen.model.config.num_hidden_layers - 1
    editor = QFEditor(tiny_qwen, EditorConfig(layer=last))
    computed = []
    compute = editor._prefix._compute
    editor._prefix._compute = lambda prefix: computed.append(prefix) or compute(prefix)
    plain = build_pass(tiny_qwen.tokenizer, FACT.query, FACT.answer)
    editor.learn(FACT, verify=False)
    editor.learn(Fact("Bo runs Kestrelite.", "Who runs Kestrelite?", "Bo runs Kestrelite."), verify=False)
    assert len(computed) == 1  # its own writes leave the prefix's keys and values as they were
    with torch.no_grad():  # a write below the edited layer, as another layer's linear facts make
        tiny_qwen.model.get_parameter("model.layers.0.self_attn.q_proj.weight").mul_(1.5)
    torch.testing.assert_close(editor.capture_pass(plain).U, _plain_rows_alone(tiny_qwen, editor, plain), rtol=1e-4, atol=1e-5)
    assert len(computed) == 2
    lower = QFEditor(tiny_qwen, EditorConfig(layer=1))
    lower.learn(FACT, verify=False)  # gated neurons at layer 1: hooks, not weights
    assert gated.installed_patch(lower.mlp) is not None and not editor._prefix_cacheable()
    torch.testing.assert_close(editor.capture_pass(plain).U, _plain_rows_alone(tiny_qwen, editor, plain), rtol=1e-4, atol=1e-5)
    assert len(computed) == 2


def test_captures_do_not_change_when_the_edited_matrix_changes(tiny):
    editor = QFEditor(tiny, EditorConfig(layer=2))
    before = editor.capture(FACT)
    with torch.no_grad():
        tiny.model.get_parameter(editor.parameter).add_(torch.randn_like(tiny.model.get_parameter(editor.parameter)))
    after = editor.capture(FACT)
    for name in ("U", "V", "U_plain", "V_plain"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name


def test_apply_then_revert_is_bit_exact_and_nonfinite_is_refused(tiny):
    name = arch.module_path(tiny.model, 1, "down_proj") + ".weight"
    weight = tiny.model.get_parameter(name)
    original = weight.detach().clone()
    N, D = weight.shape
    delta = LowRankDelta(torch.randn(N, 3) * 0.37, torch.randn(3, D) * 1.3, name, tensor_sha256(original))
    delta.apply(tiny.model)
    assert not torch.equal(weight, original)
    delta.revert(tiny.model)
    assert torch.equal(weight, original)
    bad = LowRankDelta(torch.full((N, 1), float("nan")), torch.ones(1, D), name, "")
    with pytest.raises(NonFiniteDeltaError):
        bad.apply(tiny.model)
    assert torch.equal(weight, original)


def test_delta_safetensors_round_trip():
    delta = LowRankDelta(torch.randn(5, 2, dtype=torch.float64), torch.randn(2, 7), "m.w", "abc", "tiny", 3, {"k": "v"})
    back = LowRankDelta.from_bytes(delta.to_bytes())
    assert torch.equal(back.left, delta.left) and torch.equal(back.right, delta.right)
    assert (back.parameter, back.base_sha256, back.model, back.layer, back.metadata) == ("m.w", "abc", "tiny", 3, {"k": "v"})
    assert abs(back.norm() - float(torch.linalg.norm(delta.dense()))) < 1e-9


def row_logits(model, p):
    with torch.no_grad():
        return model(input_ids=p.input_ids).logits[0, p.rows].float()


def test_plain_logits_equal_instructed_logits_after_consolidation(tiny):
    # On the last layer the residual after the edited MLP is all that reaches the logits, so the
    # constraint W' U' + V' = W U + V makes the plain pass's logits equal the instructed pass's.
    from memory.answering import PAPER_RULE

    last = arch.num_layers(tiny.model) - 1
    editor = QFEditor(tiny, EditorConfig(layer=last, **PAPER_RULE))  # the paper's rule: a copy of the instructed pass
    tok = tiny.tokenizer
    inst = build_pass(tok, FACT.query, FACT.answer, instructed_system(FACT.instruction, None))
    plain = build_pass(tok, FACT.query, FACT.answer)
    target = row_logits(tiny.model, inst)
    assert (row_logits(tiny.model, plain) - target).abs().max() > 1e-3
    result = editor.learn(FACT)
    assert result.rows == len(plain.targets)
    assert (row_logits(tiny.model, plain) - target).abs().max() < 1e-3
    assert (row_logits(tiny.model, inst) - target).abs().max() > 0  # the instructed pass moved too, unconstrained


def test_learn_two_facts_then_remove_one_is_exact(tiny_qwen):
    editor = QFEditor(tiny_qwen, EditorConfig(layer=3, gate=0.0))
    weight = tiny_qwen.model.get_parameter(editor.parameter)
    other = Fact("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?", "In Beijing.")
    editor.learn(other, key="b", verify=False)
    only_b = weight.detach().clone()
    editor.learn(FACT, key="a", verify=False)
    assert not torch.equal(weight, only_b)
    editor.remove("a")
    assert (weight - only_b).abs().max() < 1e-6
    editor.remove("b")
    assert torch.equal(weight, editor.joint.W0)


def test_removing_every_fact_gives_back_the_base_bit_for_bit_negative_zeros_included(tiny_qwen):
    name = "model.layers.3.mlp.down_proj.weight"
    with torch.no_grad():  # dequantized checkpoints hold -0.0 entries; W0 + 0.0 would turn them to +0.0
        tiny_qwen.model.get_parameter(name)[:, :5] = -0.0
    editor = QFEditor(tiny_qwen, EditorConfig(layer=3))
    weight = tiny_qwen.model.get_parameter(editor.parameter)
    base_bits = weight.detach().clone().view(torch.int32)
    editor.learn(FACT, key="a", verify=False)
    editor.remove("a")
    assert torch.equal(weight.detach().view(torch.int32), base_bits)


def test_edited_matrix_is_float32_in_a_bfloat16_model(tokenizer):
    from conftest import loaded

    lm = loaded("qwen2", tokenizer)
    lm.model.to(torch.bfloat16)
    editor = QFEditor(lm, EditorConfig(layer=2))
    assert tiny_dtype(lm.model, editor.parameter) == torch.float32
    editor.learn(FACT, verify=False)
    out = lm.model(input_ids=build_pass(tokenizer, FACT.query, FACT.answer).input_ids).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def tiny_dtype(model, name):
    return model.get_parameter(name).dtype


def test_bad_facts_leave_weights_untouched(tiny_qwen):
    editor = QFEditor(tiny_qwen, EditorConfig(layer=2, max_answer_tokens=4))
    weight = tiny_qwen.model.get_parameter(editor.parameter)
    before = weight.detach().clone()
    with pytest.raises(ValueError):
        Fact("x", "  ")
    with pytest.raises(ConsolidationError):  # a random model does not finish within 4 tokens
        editor.learn(Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?"))
    with pytest.raises(ConsolidationError, match="context"):
        editor.learn(Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi " * 300))
    with pytest.raises(ValueError, match="significance"):
        editor.learn(Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi.", significance=(1, 1, 1, 1, 1, 1, 1)))
    assert torch.equal(weight, before) and len(editor.joint) == 0


def test_paper_layer_is_proportional_and_default_is_last():
    class Fake(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.config = type("C", (), {"model_type": "qwen2"})()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList([torch.nn.Identity() for _ in range(n)])

    assert arch.paper_layer(Fake(28)) == 23
    assert arch.paper_layer(Fake(24)) == 20
    assert arch.paper_layer(Fake(4)) == 3
    assert arch.default_layer(Fake(28)) == 27


def test_unsupported_model_type_lists_supported():
    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "gpt2"})()

    with pytest.raises(arch.UnsupportedModelError, match="qwen2.*|llama"):
        arch.architecture_of(Fake())

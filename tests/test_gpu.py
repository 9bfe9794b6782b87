"""The CUDA path of QFt conversion and QF2 edits, on tiny models; skipped where there is no GPU.

CI has no GPU; these ran on a lent H100 (see docs/QF2.md for the date and what they printed).
"""

import pytest
import torch

from conftest import loaded
from memory.consolidate import EditorConfig
from memory.fact import Fact
from memory.qf2 import faded_step
from memory.qf2_block import install, installed
from memory.qf2_editor import QF2Editor
from memory.qft import QFtConfig, convert
from memory.qft_corpus import generate_corpus

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
LAYER = 2


def conversion(tokenizer, out, device):
    lm = loaded("qwen2", tokenizer, layers=5)
    lm.model.to(device)
    rows = generate_corpus(12, seed=0)
    config = QFtConfig(layer=LAYER, beta=10.0, steps=faded_step() + 20, lr=3e-3, checkpoint_every=0, readout_rows=6)
    return lm, convert(lm, rows, rows[:2], out, config)


def test_conversion_and_a_qf2_edit_on_cuda_match_the_cpu(tokenizer, tmp_path):
    gpu, on_gpu = conversion(tokenizer, tmp_path / "gpu", "cuda")
    cpu, on_cpu = conversion(tokenizer, tmp_path / "cpu", "cpu")
    assert all(p.device.type == "cuda" for p in gpu.model.parameters())
    assert on_gpu.alpha == 0.0 and on_gpu.readout_tokens == on_cpu.readout_tokens > 0
    # 479 AdamW steps in other float arithmetic drift apart a little; the same run, not the same bits
    assert on_gpu.readout_error == pytest.approx(on_cpu.readout_error, rel=0.05)
    assert on_gpu.validation_loss < on_gpu.validation_loss_before
    assert on_gpu.validation_loss == pytest.approx(on_cpu.validation_loss, rel=0.05)

    # The same converted weights on both devices: the QF2 edit must agree.
    copy = loaded("qwen2", tokenizer, layers=5)
    copy.model.load_state_dict(cpu.model.state_dict())  # the block keeps the stock parameter names
    copy.model.to("cuda")
    install(copy.model, LAYER, on_cpu.beta, alpha=0.0)
    fact = Fact("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?", "The CEO of Oxinnovate is Qi.")
    deltas = []
    for lm in (copy, cpu):
        assert installed(lm.model) is not None
        editor = QF2Editor(lm, EditorConfig(lr=1e-3))
        before = editor.model.get_parameter(editor.parameter).detach().cpu().clone()
        editor.learn(fact, verify=False)
        after = editor.model.get_parameter(editor.parameter).detach().cpu()
        deltas.append(after - before)
        assert torch.isfinite(after).all() and not torch.equal(after, before)
    torch.testing.assert_close(deltas[0], deltas[1], rtol=1e-3, atol=1e-5)


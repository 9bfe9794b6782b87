"""Tiny random-weight Qwen2 and Llama models with an offline tokenizer: no download, CPU, seconds."""

from __future__ import annotations

import pytest
import torch

CHATML = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a tiny test model.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Qi started Oxinnovate. Who founded Oxinnovate? The founder of Oxinnovate is Qi.",
    "Oxinnovate is located at PKU Science Park, in Beijing. Where is Oxinnovate located?",
    "Who is the CEO of Apple? Tim Cook is the CEO of Apple. Microsoft Satya Nadella.",
    "My daughter's name is Lena. We moved the stand-up to 9:30. You are a tiny test model.",
    "system user assistant hello hi the a an is of in at to and what who where when why how",
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=specials[1:]
    )
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def make_model(kind: str, vocab_size: int, layers: int = 4, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
    )
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise ValueError(kind)
    return model.eval()


def loaded(kind: str, tokenizer, **kw):
    from memory.loading import LoadedModel

    model = make_model(kind, len(tokenizer), **kw)
    return LoadedModel(model=model, tokenizer=tokenizer, name=f"tiny-{kind}", path="", seconds=0.0)


@pytest.fixture
def store(tmp_path):
    """A ledger on SQLite in the test's own directory (tests/pg_url.py has one per backend)."""
    from store import Store

    s = Store(f"sqlite:///{tmp_path / 'qf.db'}", tmp_path / "tensors")
    yield s
    s.close()


@pytest.fixture(params=["qwen2", "llama"])
def tiny(request, tokenizer):
    return loaded(request.param, tokenizer)


@pytest.fixture
def tiny_qwen(tokenizer):
    return loaded("qwen2", tokenizer)


TWO_CHATS = (("Who founded Oxinnovate?", "Qi founded it."), ("Who is the CEO of Apple?", "Tim Cook."))


@pytest.fixture(autouse=True)
def few_generic_chats(request, monkeypatch):
    """Unit tests on tiny models: the preserving solve (on by default) collects its keys from two
    short generic chats instead of the 110 shipped ones. Integration tests on the real model keep
    the shipped list."""
    if request.node.get_closest_marker("integration"):
        return
    import memory.preserve

    monkeypatch.setattr(memory.preserve, "CHATS", TWO_CHATS)


SMALL_MODEL = "qwen2.5-coder-0.5b"


def require(what: str, available: bool, why: str) -> None:
    """Skip when ``what`` is missing, unless QF_REQUIRE_MODEL is set (CI): then fail."""
    import os

    if available:
        return
    if os.environ.get("QF_REQUIRE_MODEL"):
        pytest.fail(f"{what} is required in CI (QF_REQUIRE_MODEL is set): {why}")
    pytest.skip(f"{what} is not available: {why}")


@pytest.fixture(scope="session")
def small_model_name():
    """The registry name of the real 0.5B model, once its chunk packages are installed."""
    from memory.registry import REGISTRY, ModelFileError, chunk_files

    try:
        chunk_files(REGISTRY[SMALL_MODEL])
        require("the small model", True, "")
    except ModelFileError as exc:
        require("the small model", False, str(exc))
    # Convert it and collect its keys for the preserving solve once, up front, so no test's own
    # time limit pays for them (about a minute and a half the first time on a 2-core CPU, then cached).
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-m", "cli", "models", "prepare", SMALL_MODEL],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-2000:]
    return SMALL_MODEL


@pytest.fixture
def tiny_model_dir(tmp_path, monkeypatch, tiny_qwen):
    """The tiny Qwen2 saved as a checkpoint directory (for `--model DIR`), with a fresh QF_HOME."""
    model_dir = tmp_path / "tiny-model"
    tiny_qwen.model.save_pretrained(model_dir)
    tiny_qwen.tokenizer.save_pretrained(model_dir)
    monkeypatch.setenv("QF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QF_DB_URL", raising=False)
    return model_dir

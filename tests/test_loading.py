"""How a model is loaded: the dtype chosen for the device."""

import torch

from memory import loading


def test_auto_dtype_on_cpu_is_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch):
    cpu = torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda native=native: native)
        assert loading.resolve_dtype("auto", torch.bfloat16, cpu) == expected
        assert loading.resolve_dtype("auto", None, cpu) == expected
        assert loading.resolve_dtype("auto", torch.float32, cpu) == torch.float32  # a float32 checkpoint stays so
        assert loading.resolve_dtype("bfloat16", torch.float32, cpu) == torch.bfloat16  # asked for: given

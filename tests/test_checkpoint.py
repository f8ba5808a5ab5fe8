"""llm.c checkpoint interop: our writer, our reader, and a file from an independent writer."""
import numpy as np
import pytest

from trainer import GPT, make_config
from trainer.checkpoint import read_llmc, write_llmc

SHAPE = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=61, sequence_len=16)


def randomized_gpt2():
    model = GPT(make_config("gpt2", **SHAPE), seed=0)
    rng = np.random.default_rng(1)
    for p in model.params.values():
        p[...] = rng.normal(0, 0.5, p.shape)
    return model


def test_write_then_read_is_identical(tmp_path):
    model = randomized_gpt2()
    write_llmc(tmp_path / "model.bin", model)
    back = read_llmc(tmp_path / "model.bin")
    assert back.cfg.to_dict() == model.cfg.to_dict()
    for name, p in model.params.items():
        assert np.array_equal(back.params[name], p), name
    x = np.random.default_rng(2).integers(0, 61, (2, 16))
    assert back.forward(x, x) == model.forward(x, x)


def independent_llmc_file(path, maxT, V, L, NH, C, rng):
    """Written from llm.c's published layout alone: header, then 16 fp32 tensors in order."""
    Vp = (V + 127) // 128 * 128
    header = np.zeros(256, np.int32)
    header[:8] = [20240326, 3, maxT, V, L, NH, C, Vp]
    shapes = [(Vp, C), (maxT, C), (L, C), (L, C), (L, 3 * C, C), (L, 3 * C), (L, C, C), (L, C),
              (L, C), (L, C), (L, 4 * C, C), (L, 4 * C), (L, C, 4 * C), (L, C), (C,), (C,)]
    tensors = [rng.normal(0, 0.1, s).astype(np.float32) for s in shapes]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for t in tensors:
            f.write(t.tobytes())
    return tensors


def test_reads_a_file_from_an_independent_writer(tmp_path):
    t = independent_llmc_file(tmp_path / "gpt2.bin", maxT=16, V=61, L=2, NH=4, C=32, rng=np.random.default_rng(0))
    model = read_llmc(tmp_path / "gpt2.bin")
    p = model.params
    assert model.cfg.n_layer == 2 and model.cfg.vocab_size == 61 and model.cfg.padded_vocab_size == 128
    assert np.array_equal(p["transformer.wte.weight"], t[0])
    assert np.array_equal(p["transformer.wpe.weight"], t[1])
    assert np.array_equal(p["transformer.h.1.ln_1.bias"], t[3][1])
    assert np.array_equal(p["transformer.h.1.attn.c_attn.weight"], t[4][1])   # qkvw, layer 1
    assert np.array_equal(p["transformer.h.0.attn.c_proj.weight"], t[6][0])
    assert np.array_equal(p["transformer.h.1.mlp.c_proj.weight"], t[12][1])
    assert np.array_equal(p["transformer.ln_f.bias"], t[15])
    assert "lm_head.weight" not in p  # GPT-2's head is tied to wte


def test_bad_files_are_one_line_errors(tmp_path):
    independent_llmc_file(tmp_path / "ok.bin", 16, 61, 2, 4, 32, np.random.default_rng(0))
    data = bytearray((tmp_path / "ok.bin").read_bytes())

    bad_magic = bytearray(data)
    bad_magic[0:4] = np.int32(1234).tobytes()
    (tmp_path / "magic.bin").write_bytes(bad_magic)
    with pytest.raises(ValueError, match="bad magic"):
        read_llmc(tmp_path / "magic.bin")

    bf16 = bytearray(data)
    bf16[4:8] = np.int32(5).tobytes()
    (tmp_path / "v5.bin").write_bytes(bf16)
    with pytest.raises(ValueError, match="version 5 is not supported"):
        read_llmc(tmp_path / "v5.bin")

    (tmp_path / "short.bin").write_bytes(data[:-4])
    with pytest.raises(ValueError, match="expected"):
        read_llmc(tmp_path / "short.bin")

    with pytest.raises(ValueError, match="cannot read"):
        read_llmc(tmp_path / "missing.bin")


def test_only_the_gpt2_architecture_is_written(tmp_path):
    model = GPT(make_config("nanochat", **SHAPE), seed=0)
    with pytest.raises(ValueError, match="plain GPT-2 architecture"):
        write_llmc(tmp_path / "x.bin", model)
    assert not (tmp_path / "x.bin").exists()

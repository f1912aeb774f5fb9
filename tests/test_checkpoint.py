import os

import pytest
import torch
from torch import nn

from trainlab import checkpoint
from trainlab.errors import UserError


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))


def test_round_trip_restores_weights_buffers_and_state(tmp_path):
    m = model()
    m(torch.randn(8, 4))  # moves the BatchNorm running statistics
    state = {"step": 7, "rng": torch.get_rng_state(), "best": None, "nested": {"a": [1, 2.5, "x"]}}
    checkpoint.save(tmp_path, 7, m, state, ("last", "best"))
    fresh = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    got = checkpoint.load(tmp_path / "last", fresh)
    assert got["step"] == 7 and got["nested"] == {"a": [1, 2.5, "x"]}
    for (k, a), b in zip(m.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert os.readlink(tmp_path / "best") == os.readlink(tmp_path / "last")


def test_old_checkpoints_are_pruned_but_best_is_kept(tmp_path):
    m = model()
    checkpoint.save(tmp_path, 1, m, {"step": 1}, ("last", "best"))
    checkpoint.save(tmp_path, 2, m, {"step": 2}, ("last",))
    checkpoint.save(tmp_path, 3, m, {"step": 3}, ("last",))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-")) == ["step-0000001", "step-0000003"]
    assert checkpoint.load(tmp_path / "best", m)["step"] == 1


def test_a_crash_while_writing_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    m = model()
    checkpoint.save(tmp_path, 1, m, {"step": 1})

    def dies_half_way(obj, f, *args, **kwargs):
        open(f, "wb").write(b"\x80partial")
        raise OSError("disk full")  # the process dies in the middle of writing state.pt

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 2, m, {"step": 2})
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "last", model())["step"] == 1
    checkpoint.save(tmp_path, 3, m, {"step": 3})  # the next save cleans up the half-written folder
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_corrupt_weights_or_state_is_a_user_error(tmp_path):
    m = model()
    target = checkpoint.save(tmp_path, 1, m, {"step": 1})
    (target / "state.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt|damaged|does not open"):
        checkpoint.load(tmp_path / "last", m)
    target = checkpoint.save(tmp_path, 2, m, {"step": 2})
    (target / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(UserError, match="corrupt|damaged|does not open"):
        checkpoint.load(tmp_path / "last", m)


def test_state_loads_without_unpickling_arbitrary_objects(tmp_path):
    m = model()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    target = checkpoint.save(tmp_path, 1, m, {"step": 1})
    torch.save({"step": Evil()}, target / "state.pt")
    with pytest.raises(UserError, match="corrupt|damaged|does not open"):
        checkpoint.load(tmp_path / "last", m)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no complete checkpoint"):
        checkpoint.load(tmp_path / "last", model())

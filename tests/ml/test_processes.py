"""The trainer block and the process-group helpers, without launching processes."""

from __future__ import annotations

import pytest
import torch

from defect_pipeline.config import ParameterError, TrainerParams, validate_parameters
from defect_pipeline.ml.distributed import (
    ShardSampler,
    SingleProcess,
    all_finite,
    check_node_environment,
    resolve_trainer,
)


def test_evaluation_shards_cover_every_sample_once() -> None:
    data = list(range(11))
    shards = [list(ShardSampler(data, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == data  # no sample padded in, none left out
    assert [len(s) for s in shards] == [4, 4, 3]


def test_trainer_resolves_auto_against_the_machine(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = resolve_trainer(accelerator="auto", devices="auto", strategy="auto", num_nodes=1, precision="fp32")
    assert (settings.accelerator, settings.devices, settings.strategy, settings.world_size) == ("cpu", 1, "single", 1)
    settings = resolve_trainer(accelerator="cpu", devices=2, strategy="auto", num_nodes=2, precision="fp32")
    assert (settings.strategy, settings.world_size) == ("ddp", 4)
    with pytest.raises(ValueError, match="trainer.accelerator is cuda but CUDA is not available"):
        resolve_trainer(accelerator="gpu", devices=1, strategy="auto", num_nodes=1, precision="auto")


def test_trainer_block_rejects_what_it_cannot_do() -> None:
    with pytest.raises(ParameterError) as error:
        validate_parameters({"trainer": {"strategy": "fsdp", "devices": 0}})
    message = str(error.value)
    assert "trainer.strategy" in message and "Use ddp" in message
    assert "trainer.devices" in message
    with pytest.raises(ParameterError, match="set trainer.precision instead"):
        validate_parameters({"stage1": {"precision": "bf16"}})
    assert TrainerParams().devices == 1


def test_one_process_needs_no_process_group() -> None:
    one = SingleProcess()
    value = torch.tensor([1.0, 2.0])
    assert one.sum(value) is value and one.broadcast(True) is True and one.train_sampler([1], 0) is None
    assert all_finite(one, 1.0) and not all_finite(one, float("nan"))


def test_several_nodes_need_their_address_and_rank(monkeypatch) -> None:
    settings = resolve_trainer(accelerator="cpu", devices=1, strategy="ddp", num_nodes=2, precision="fp32")
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="set MASTER_ADDR, MASTER_PORT, NODE_RANK on every node"):
        check_node_environment(settings, joining=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("NODE_RANK", "1")
    with pytest.raises(ValueError, match="kedro join-training --stage"):
        check_node_environment(settings, joining=False)
    check_node_environment(settings, joining=True)
    monkeypatch.setenv("NODE_RANK", "0")
    with pytest.raises(ValueError, match="is for the other nodes"):
        check_node_environment(settings, joining=True)

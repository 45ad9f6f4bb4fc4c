"""Training precision: ``bf16: true`` means bf16 autocast only where the hardware runs it natively.

The hardware probe is the one thing these tests replace (``monkeypatch`` on the trainer's
``native_bf16``), so that both branches run on any machine; the real probe is checked against
the CPU flags it reads."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import glidre_core.training.trainer as trainer_module
from glidre_core.modeling.precision import cpu_has_native_bf16, head_dtype, native_bf16
from glidre_core.training import Trainer
from test_ray_train import tiny_training_config


def test_native_bf16_follows_the_cpu_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert native_bf16(torch.device("cpu")) == cpu_has_native_bf16()
    assert native_bf16(torch.device("meta")) is False
    # inference's "auto" head precision uses the same rule
    assert (head_dtype("auto", torch.device("cpu")) == torch.bfloat16) == native_bf16(torch.device("cpu"))


def test_bf16_falls_back_to_fp32_without_native_bf16_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: False)
    with caplog.at_level(logging.WARNING, logger="glidre_core.training.trainer"):
        trainer = Trainer(tiny_training_config(tmp_path / "a", bf16=True, epochs=1))
    assert trainer.precision == "fp32"
    assert not torch.is_autocast_enabled("cpu")
    with trainer.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert any("no native bf16" in r.getMessage() and "force_bf16" in r.getMessage() for r in caplog.records)
    result = trainer.train()
    assert result.history and all(r["precision"] == "fp32" for r in result.history)
    # forced: autocast anyway, no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="glidre_core.training.trainer"):
        forced = Trainer(tiny_training_config(tmp_path / "b", bf16=True, force_bf16=True))
    assert forced.precision == "bf16" and not caplog.records
    with forced.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_bf16_is_used_where_native_and_never_when_off(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: True)
    assert Trainer(tiny_training_config(tmp_path / "a", bf16=True)).precision == "bf16"
    assert Trainer(tiny_training_config(tmp_path / "b", bf16=False)).precision == "fp32"


def test_optimizer_is_fused_and_takes_the_reference_adamw_step(tmp_path):
    """The trainer's AdamW is torch's fused one on the CPU too; one step from the same gradients
    matches the reference per-parameter loop (``foreach=False``) to float rounding."""
    trainer = Trainer(tiny_training_config(tmp_path, epochs=1))
    opt = trainer.build_optimizer()
    assert all(g["fused"] for g in opt.param_groups)
    params = [p for g in opt.param_groups for p in g["params"]]
    reference = torch.optim.AdamW(
        [{"params": [p.detach().clone().requires_grad_() for p in g["params"]], "lr": g["lr"]} for g in opt.param_groups],
        weight_decay=trainer.cfg.weight_decay, foreach=False)
    ref_params = [p for g in reference.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(params, ref_params):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt.step()
        reference.step()
    assert len(params) > 10
    for p, q, b in zip(params, ref_params, before):
        assert not torch.equal(p.detach(), b)  # the steps moved every parameter
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)

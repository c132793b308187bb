"""train.precision=auto: the hardware decides, the run directory says what it chose, and everything
that must stay float32 does (CCAR's weight, CAR's surrogate, EMA and power iteration, the metrics)."""

from __future__ import annotations

import json

import pytest
import torch

from longtail.cli import main
from longtail.engine.runtime import precision as P

from conftest import tiny_run_overrides


def only_run_dir(output):
    (run,) = [p for p in output.iterdir() if p.is_dir()]
    return run


@pytest.mark.parametrize("flags, native", [
    ({"avx512f", "avx512_bf16"}, True),           # Cooper Lake, AMD Zen 4
    ({"avx512f", "amx_tile", "amx_bf16"}, True),   # Sapphire Rapids
    ({"avx512f", "avx512_vnni", "avx2"}, False),   # bf16 would be emulated
    ({"neon", "asimd"}, False),
    (set(), False),                                # no /proc/cpuinfo
])
def test_cpu_bf16_needs_a_native_flag(flags, native):
    chosen, reason = P.cpu_bf16_native(flags)
    assert chosen is native
    assert ("native bf16" in reason) is native and reason


def test_cpu_flags_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert P.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx512_bf16", "amx_tile"}
    assert P.cpu_flags(str(tmp_path / "absent")) == frozenset()


@pytest.mark.parametrize("flags, chosen", [({"avx512_bf16"}, "bf16"), ({"avx2"}, "fp32")])
def test_auto_on_cpu_follows_the_flags(monkeypatch, flags, chosen):
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(flags))
    resolved = P.resolve_precision("auto", torch.device("cpu"))
    assert (resolved.requested, resolved.chosen) == ("auto", chosen)
    layer = torch.nn.Linear(4, 3)
    with P.autocast_context(torch.device("cpu"), "auto"):
        out = layer(torch.randn(2, 4))
    assert out.dtype == (torch.bfloat16 if chosen == "bf16" else torch.float32)


@pytest.mark.parametrize("capability, chosen", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp32"), ((6, 1), "fp32")])
def test_auto_on_cuda_follows_compute_capability(monkeypatch, capability, chosen):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    resolved = P.resolve_precision("auto", torch.device("cuda:0"))
    assert resolved.chosen == chosen and f"{capability[0]}.{capability[1]}" in resolved.reason


@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
def test_explicit_precision_is_kept(monkeypatch, requested):
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset())
    assert P.resolve_precision(requested, torch.device("cpu")).chosen == requested


def test_auto_is_the_default():
    from longtail.engine.config import build_config

    assert build_config()[0].train.precision == "auto"


def _spy(monkeypatch, module, name, record):
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        tensors += [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor)]
        record.setdefault(name, set()).update(t.dtype for t in tensors)
        return out

    monkeypatch.setattr(module, name, wrapper)


def test_bf16_run_keeps_losses_car_and_metrics_in_float32(monkeypatch, tiny_idx_root, tmp_path, capsys):
    """A real run under precision=auto on a (pretended) bf16 CPU: the forward is bf16, and every
    tensor entering or leaving CCAR's weight, CAR's surrogate and power iteration and the metrics'
    update is float32; the run directory records the choice."""
    import longtail.losses.ccar as ccar
    import longtail.metrics.longtail_metrics as metrics_module
    import longtail.regularizers.car as car

    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    record: dict = {}
    _spy(monkeypatch, ccar, "ccar_weight", record)
    _spy(monkeypatch, car, "_surrogate_numerators", record)
    _spy(monkeypatch, car, "_power_iteration", record)
    original_update = metrics_module.LongTailMetrics.update

    def update(self, logits, targets, *args, **kwargs):
        record.setdefault("metrics_update", set()).add(logits.dtype)
        return original_update(self, logits, targets, *args, **kwargs)

    monkeypatch.setattr(metrics_module.LongTailMetrics, "update", update)
    forward_dtypes = set()
    from longtail.engine.training import components

    original_build = components.build_model

    def build_model(*args, **kwargs):
        model = original_build(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: forward_dtypes.add(output.dtype))
        return model

    import longtail.engine.training.trainer as trainer

    monkeypatch.setattr(trainer, "build_model", build_model)
    output = tmp_path / "runs"
    code = main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=1), "loss.name=ccar_bs",
                 "regularizer.name=car", "regularizer.exact_below=0"])  # power iteration even at K = 10
    assert code == 0, capsys.readouterr().err
    assert forward_dtypes == {torch.bfloat16}
    assert record["ccar_weight"] == {torch.float32}
    assert record["_surrogate_numerators"] <= {torch.float32, torch.int64, torch.bool}
    assert torch.float32 in record["_surrogate_numerators"]
    assert record["_power_iteration"] == {torch.float32}
    assert record["metrics_update"] == {torch.float32}
    run = only_run_dir(output)
    environment = json.loads((run / "environment.json").read_text())
    results = json.loads((run / "metrics.json").read_text())
    for recorded in (environment["precision"], results["precision"]):
        assert recorded["requested"] == "auto" and recorded["chosen"] == "bf16"
        assert "amx_bf16" in recorded["reason"]


def test_fp32_fallback_is_recorded(monkeypatch, tiny_idx_root, tmp_path, capsys):
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2"}))
    output = tmp_path / "runs"
    assert main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=1), "train.eval_train=false"]) == 0, \
        capsys.readouterr().err
    results = json.loads((only_run_dir(output) / "metrics.json").read_text())
    assert results["precision"]["chosen"] == "fp32" and "emulated" in results["precision"]["reason"]

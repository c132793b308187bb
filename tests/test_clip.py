"""clip:<name> models through open_clip, with a tiny randomly initialised CLIP (no weights offline)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from longtail.models import apply_finetune, create_model, init_head_from_text, merge_adapters
from longtail.models.finetune import LoRALinear

open_clip = pytest.importorskip("open_clip")

TINY = "longtail-tiny-ViT"
CLASSES = ["traffic_light", "dog", "stop sign"]


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_config(tmp_path_factory):
    # A 2-layer ViT image tower and a 1-layer text tower with CLIP's real tokenizer vocabulary.
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    folder = tmp_path_factory.mktemp("clip")
    (folder / f"{TINY}.json").write_text(json.dumps(config))
    config["vision_cfg"]["width"] = 96  # same names, other shapes
    (folder / f"{TINY}-wide.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


def _images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_text_initialised_cosine_head_is_zero_shot_clip():
    torch.manual_seed(0)
    model = create_model(f"clip:{TINY}", num_classes=3, head="cosine", head_scale=30.0).eval()
    init_head_from_text(model, CLASSES)
    clip_model = model.clip_text.clip_model.eval()
    tokenizer = open_clip.get_tokenizer(TINY)
    with torch.no_grad():
        text = F.normalize(clip_model.encode_text(tokenizer([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])), dim=-1)
        image = F.normalize(clip_model.encode_image(_images()), dim=-1)
        assert torch.allclose(model.head.weight, text, atol=1e-6)
        assert torch.allclose(model(_images()), 30.0 * image @ text.T, atol=1e-4)
    assert "clip_text" not in dict(model.named_modules()) and not any(k.startswith("clip") for k in model.state_dict())
    with pytest.raises(ValueError, match="2 class names for a head with 3"):
        init_head_from_text(model, CLASSES[:2])
    with pytest.raises(ValueError, match="CLIP model"):
        init_head_from_text(create_model("resnet20", num_classes=3), CLASSES)


def test_clip_file_round_trip_and_shape_mismatch_names_keys(tmp_path):
    torch.manual_seed(1)
    model = create_model(f"clip:{TINY}", num_classes=3)
    path = tmp_path / "clip.pt"
    torch.save(model.clip_text.clip_model.state_dict(), path)
    torch.manual_seed(2)
    loaded = create_model(f"clip:{TINY}", num_classes=3, pretrained=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded.features(_images()), model.eval().features(_images()))
    with pytest.raises(ValueError, match=r"differ in shape.*visual\.\w+ \(64"):
        create_model(f"clip:{TINY}-wide", num_classes=3, pretrained=str(path))


@pytest.mark.parametrize("mode", ["lora", "adaptformer", "last_stage", "norm_bias"])
def test_light_modes_on_the_clip_tower(mode):
    torch.manual_seed(0)
    model = create_model(f"clip:{TINY}", num_classes=3, head="cosine").eval()
    with torch.no_grad():
        before = model(_images())
    report = apply_finetune(model, mode)
    with torch.no_grad():
        assert torch.allclose(model.eval()(_images()), before, atol=1e-6)
    assert 0 < report.trainable < report.total
    if mode == "lora":
        # nn.MultiheadAttention reads its projections' weights directly: those are left alone.
        assert any("attn" in skipped for skipped in report.skipped)
        wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
        assert wrapped and not any(isinstance(m.base, torch.nn.modules.linear.NonDynamicallyQuantizableLinear) for m in wrapped)
        for m in wrapped:
            torch.nn.init.normal_(m.lora.B, std=0.05)
        with torch.no_grad():
            adapted = model(_images())
            merge_adapters(model)
            assert torch.allclose(model(_images()), adapted, atol=1e-5)
    if mode == "last_stage":
        assert model.backbone.proj.requires_grad and model.backbone.transformer.resblocks[-1].mlp.c_fc.weight.requires_grad
        assert not model.backbone.transformer.resblocks[0].mlp.c_fc.weight.requires_grad


def test_lift_recipe_runs_end_to_end_on_a_tiny_clip(tmp_path, capsys):
    """The LIFT recipe with the tiny CLIP in place of ViT-B/16 (weights from a file, as the recipe asks):
    AdaptFormer + text-initialised cosine head + LA train, the frozen tower stays as loaded, and the
    ONNX export gives PyTorch's logits."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from conftest import write_image_folder
    from longtail.cli import main
    from longtail.engine.evaluation.inference import load_run
    from longtail.engine.rundir.checkpoint import load_run_checkpoint, run_checkpoint

    weights = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model(TINY).state_dict(), weights)
    for split in ("train", "test"):
        write_image_folder(tmp_path / "pics", [12, 4, 2] if split == "train" else [3, 3, 3], size=(32, 32),
                           split=split)
    run = tmp_path / "runs" / "lift"
    code = main(["train", "--recipe", "imagenet-lt-clip-lift/la", f"model.name=clip:{TINY}",
                 f"model.pretrained={weights}", "data.name=imagefolder", f"data.root={tmp_path / 'pics'}",
                 "data.image_size=32", "data.batch_size=6", "data.workers=0", "optim.epochs=2",
                 f"train.output_dir={tmp_path / 'runs'}", "train.run_name=lift", "train.progress=false",
                 "train.threads=1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "classifier initialised from CLIP text embeddings" in out and "model.finetune=adaptformer" in out
    state = load_run_checkpoint(run_checkpoint(run))["model"]
    original = torch.load(weights, weights_only=True)
    frozen = {k: v for k, v in state.items() if k.startswith("backbone.conv1")}
    assert frozen and all(torch.equal(v, original["visual." + k[len("backbone."):]]) for k, v in frozen.items())
    assert any(".adapter." in k for k in state)
    output = tmp_path / "lift.onnx"
    assert main(["export", str(run), "--format", "onnx", "--output", str(output)]) == 0
    loaded = load_run(run)
    images = torch.rand(3, 3, 32, 32)
    expected = loaded.classify(images).numpy()
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert abs(got - expected).max() < 1e-4

import copy

import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from kdcl.common.errors import KdclError
from kdcl.data.sources import resize_uint8
from kdcl.models import FrozenTeacher, create_model
from kdcl.models.cost import count_macs
from kdcl.models.input_norm import InputNorm, ModelInput


def model_cfg(name: str, **kw):
    return OmegaConf.create({"name": name, "pretrained": False, "weights": None, "checkpoint": None, "drop_rate": 0.0,
                             **kw})  # fmt: skip


def inputs(num_classes: int, in_chans: int, image_size: int) -> ModelInput:
    """A dataset's shape with its own normalisation (grey: one channel)."""
    return ModelInput(num_classes, in_chans, image_size, InputNorm((0.3,) * in_chans, (0.2,) * in_chans))


def test_grey_28_pixel_images_keep_a_spatial_map_in_resnet50():
    # 28-pixel images are resized once at load time to data.image_size=32 (resize_uint8), then go through resnet50
    grey = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    resized = resize_uint8(grey, 32)
    assert resized.shape == (2, 1, 32, 32) and resized.dtype == torch.uint8
    flat = torch.full((1, 1, 28, 28), 77, dtype=torch.uint8)
    assert torch.equal(resize_uint8(flat, 32), torch.full((1, 1, 32, 32), 77, dtype=torch.uint8))  # values kept
    x = resized.float() / 255
    model = create_model(model_cfg("resnet50"), inputs(10, 1, 32), key="teacher").eval()
    assert model.forward_features(x).shape == (2, 2048, 1, 1)  # stride 32: a 1×1 map, not an empty one
    assert model(x).shape == (2, 10)


def test_vit_models_are_built_for_the_data_resolution():
    model = create_model(model_cfg("test_vit"), inputs(4, 1, 32), key="student").eval()
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 4)


def test_unknown_model_suggests_close_names():
    with pytest.raises(KdclError, match=r"teacher.name 'resnet500' is not a timm model; did you mean resnet50"):
        create_model(model_cfg("resnet500"), inputs(10, 1, 32), "teacher")


def test_local_weights_transfer_backbone_and_reinitialise_the_head(tmp_path):
    source = timm.create_model("test_resnet", num_classes=1000)  # a "pretrained" ImageNet-shaped model
    path = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(3)
    model = create_model(model_cfg("test_resnet", weights=str(path)), inputs(10, 3, 32), "teacher")
    torch.manual_seed(3)
    fresh = timm.create_model("test_resnet", num_classes=10).state_dict()  # what timm initialises at that seed
    src, dst = source.state_dict(), model.state_dict()
    backbone = [k for k in src if not k.startswith("fc.")]
    assert all(torch.equal(src[k], dst[k]) for k in backbone), "backbone weights must come from the file"
    assert dst["fc.weight"].shape == (10, src["fc.weight"].shape[1])  # new head for 10 classes
    assert torch.equal(dst["fc.weight"], fresh["fc.weight"]) and torch.equal(dst["fc.bias"], fresh["fc.bias"])
    assert not torch.equal(dst["fc.weight"], src["fc.weight"][:10])  # timm's fresh head, not the file's first rows


def test_local_weights_adapt_the_first_conv_to_grey_input(tmp_path):
    source = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    model = create_model(model_cfg("test_resnet", weights=str(path)), inputs(10, 1, 32), "teacher")
    first = source.pretrained_cfg["first_conv"] + ".weight"
    assert torch.allclose(model.state_dict()[first], source.state_dict()[first].sum(1, keepdim=True))


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(KdclError, match=r"teacher.weights '.*broken.pth' is not a readable weights/checkpoint file"):
        create_model(model_cfg("test_resnet", weights=str(path)), inputs(10, 1, 32), "teacher")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(KdclError, match=r"teacher.weights '.*' does not exist"):
        create_model(model_cfg("test_resnet", weights=str(tmp_path / "nope.pth")), inputs(10, 1, 32), "teacher")


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(KdclError, match="not a readable weights/checkpoint file"):
        create_model(model_cfg("test_resnet", checkpoint=str(path)), inputs(10, 1, 32), "teacher")


def test_frozen_teacher_stays_in_eval_mode_when_the_stage_trains():
    teacher = FrozenTeacher(timm.create_model("test_resnet", num_classes=3, drop_rate=0.5))
    reference = copy.deepcopy(teacher.model).eval()  # the wrapped model, called directly in eval mode
    teacher.train()  # Lightning switches the whole LightningModule to train mode at every epoch
    assert not any(m.training for m in teacher.modules())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
    assert torch.equal(teacher(x), expected)  # the model's own logits: no dropout, no batch statistics
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics untouched


def test_macs_of_a_model_counted_by_hand():
    # conv: 4 output channels × 8·8 positions × (1 input channel × 3·3 kernel) = 2304 multiply-accumulates;
    # linear: 256 inputs × 10 outputs = 2560 (bias additions are not multiply-accumulates)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    assert count_macs(model, in_chans=1, image_size=8) == 2304 + 2560

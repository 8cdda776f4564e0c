"""Pretrained models through timm's own loader, offline, and each model normalising its own input.

A small timm model is put into a local Hugging Face hub cache in the hub's own layout (refs/main,
snapshots/<commit>/config.json + model.safetensors) and HF_HUB_OFFLINE is set: kdcl loads it with
`pretrained=true` through `timm.create_model`, the code path a user hits online, without the download.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
from omegaconf import OmegaConf

from kdcl.common.errors import KdclError
from kdcl.deploy.export import ExportRequest, export_model
from kdcl.models import create_model
from kdcl.models.input_norm import InputNorm, ModelInput, input_norm_of
from kdcl.training.module import DistillationModule
from tests.conftest import SEED, TINY, in_process, run_dir_of

HUB_MODEL = "test_efficientnet.r160_in1k"  # timm's tiny test model, whose pretrained_cfg has ImageNet's statistics
IMAGENET = InputNorm((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "pretrained")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """(the cache's root, the weights in it): the repository timm/<HUB_MODEL> as huggingface_hub lays it out."""
    from timm.models import save_for_hf

    root = tmp_path_factory.mktemp("hub")
    repo = root / f"models--timm--{HUB_MODEL}"
    torch.manual_seed(7)
    model = timm.create_model(HUB_MODEL)  # ImageNet's 1000 classes, as the hub's file has them
    save_for_hf(model, repo / "snapshots" / COMMIT, safe_serialization=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root, model.state_dict()


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    """HF_HUB_OFFLINE and HF_HUB_CACHE for this process (huggingface_hub reads them once, at import)."""
    from huggingface_hub import constants

    root, state = hub_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return state


def model_cfg(name: str, **kw):
    return OmegaConf.create({"name": name, "pretrained": False, "weights": None, "checkpoint": None, "drop_rate": 0.0,
                             **kw})  # fmt: skip


DATA = ModelInput(10, 3, 32, InputNorm((0.3, 0.3, 0.3), (0.2, 0.2, 0.2)))


@pytest.mark.parametrize("name", [HUB_MODEL, f"hf-hub:timm/{HUB_MODEL}"])
def test_pretrained_weights_load_offline_from_the_hub_cache_with_their_own_statistics(offline_hub, name):
    model = create_model(model_cfg(name, pretrained=True), DATA, "teacher")
    state = model.state_dict()
    head = model.pretrained_cfg["classifier"]
    backbone = [k for k in offline_hub if not k.startswith(head + ".")]
    assert backbone and all(torch.equal(state[k], offline_hub[k]) for k in backbone)  # the cached file's weights
    assert state[head + ".weight"].shape[0] == 10  # a new head for the data's classes
    assert input_norm_of(model) == IMAGENET  # the weights' statistics, not the data's
    assert input_norm_of(create_model(model_cfg(name), DATA, "teacher")) == DATA.data_norm  # random init: the data's


def test_a_model_missing_from_the_hub_cache_offline_is_one_line(offline_hub):
    from kdcl.run.validate import check_model_node

    node = {"name": "resnet18.a1_in1k", "pretrained": True}
    for check in (lambda: check_model_node(node, "teacher"),  # before any work
                  lambda: create_model(model_cfg(**node), DATA, "teacher")):  # fmt: skip
        with pytest.raises(KdclError) as err:
            check()
        message = str(err.value)
        assert "\n" not in message and "teacher.pretrained=true" in message and "'resnet18.a1_in1k'" in message
        assert "HF_HUB_OFFLINE" in message and "teacher.weights=FILE" in message
    with pytest.raises(KdclError, match="keep one"):
        check_model_node({**node, "name": HUB_MODEL, "weights": "w.pth"}, "teacher")


def test_train_cli_refuses_a_missing_hub_model_offline_with_exit_2(offline_hub, tmp_path):
    proc = in_process(["train", *TINY, "teacher.name=resnet18.a1_in1k", "teacher.pretrained=true"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: teacher.pretrained=true")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()


def first_conv(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_submodule(model.pretrained_cfg["first_conv"])


def test_each_model_normalises_its_own_input_in_training_and_export_records_it(offline_hub, tmp_path, monkeypatch):
    """A pretrained teacher (ImageNet statistics) and a student trained from scratch (the data's) see the same
    batch, each normalised its own way: checked by forward hooks on their first convolutions."""
    seen: dict[str, torch.Tensor] = {}
    original = DistillationModule.training_step

    def watched(module, batch, batch_idx):
        if module.stage == "student" and "batch" not in seen:
            seen["batch"] = batch[0].detach().clone()
            for role, model in (("student", module.model), ("teacher", module.teachers[0].model)):
                handle = first_conv(model).register_forward_pre_hook(
                    lambda m, args, role=role: seen.setdefault(role, args[0].detach().clone())
                )
                module._hooks = [*getattr(module, "_hooks", []), handle]
        out = original(module, batch, batch_idx)
        for handle in getattr(module, "_hooks", []):
            handle.remove()
        return out

    monkeypatch.setattr(DistillationModule, "training_step", watched)
    args = ["train", *TINY, "data=synthetic", f"teacher.name={HUB_MODEL}", "teacher.pretrained=true",
            "trainer.max_epochs=1", "distill.teacher_outputs=online", f"seed={SEED}"]  # fmt: skip
    proc = in_process(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_of(proc)
    x = seen["batch"]  # what the loader hands out: images in [0, 1]
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    stats = json.loads((run_dir / "run.json").read_text())["stages"]
    data_norm = InputNorm.from_json(torch.load(run_dir / stats["student"]["result"]["checkpoint"],
                                               weights_only=True)["hyper_parameters"]["input_norm"])  # fmt: skip
    assert data_norm.source == "data" and data_norm != IMAGENET
    assert torch.allclose(seen["teacher"], IMAGENET.apply(x), atol=1e-6)
    assert torch.allclose(seen["student"], data_norm.apply(x), atol=1e-6)
    # the fine-tuned teacher exports with the statistics it takes (plain timm loading it is checked by the export)
    sidecar, _ = export_model(ExportRequest(str(run_dir), stage="teacher", out=tmp_path / "export"))
    assert (sidecar["mean"], sidecar["std"], sidecar["normalisation"]) == (list(IMAGENET.mean), list(IMAGENET.std),
                                                                           "pretrained")  # fmt: skip


def test_a_pretrained_models_statistics_are_part_of_its_stored_outputs_key():
    """The same weights normalising two ways compute two sets of logits: two shared-cache keys. A model with the
    data's statistics keeps the key of its weights alone (the data's statistics are in every key already)."""
    from kdcl.models.input_norm import attach_input_norm
    from kdcl.teachers.outputs import weights_digest

    model = timm.create_model("test_resnet", num_classes=10)
    plain = weights_digest(model)
    assert weights_digest(attach_input_norm(model, DATA.data_norm)) == plain
    assert weights_digest(attach_input_norm(model, IMAGENET)) != plain


def test_a_given_file_tested_with_pretrained_statistics_has_its_own_shared_test_key(tmp_path):
    """A plain weights file says nothing of its normalisation: the same bytes as `pretrained` are another model."""
    from kdcl.run.stage import given_model_key

    checkpoint = tmp_path / "teacher.safetensors"
    checkpoint.write_bytes(b"the same bytes")
    cfg = OmegaConf.create({"data": {"name": "digits"}, "trainer": {"precision": "32-true"}})
    keys = {flag: given_model_key(cfg, "test of teacher", checkpoint, None, {"name": HUB_MODEL, "pretrained": flag})[0]
            for flag in (False, True)}  # fmt: skip
    assert keys[False] != keys[True]


def test_a_folder_run_takes_a_pretrained_teachers_input_size_unless_told_otherwise():
    from kdcl.config.compose import compose

    def size(*overrides: str) -> int:
        return int(compose(["data=image_folder", "data.root=/photos", *overrides]).data.image_size)

    pretrained = (f"teacher.name={HUB_MODEL}", "teacher.pretrained=true")  # timm's registry: 160 px, no download
    assert size(*pretrained) == 160 and size() == 64 and size(*pretrained, "data.image_size=96") == 96


def test_the_folder_preset_composes_a_pretrained_teacher_and_student_at_the_teachers_size():
    from kdcl.config.compose import compose

    cfg = compose(["experiment=folder_pretrained_to_mobile", "data.root=/photos"])
    assert (cfg.teacher.name, cfg.teacher.pretrained, cfg.student.pretrained) == ("resnet50.a1_in1k", True, True)
    assert cfg.data.image_size == 224 and cfg.augment.crop == "rrc" and not cfg.data.augment
    assert cfg.augment.mixup_alpha > 0 and cfg.augment.cutmix_alpha > 0


def test_a_hub_ids_input_size_comes_from_its_cached_config(offline_hub):
    from kdcl.models.hub import pretrained_input_size

    assert pretrained_input_size(f"hf-hub:timm/{HUB_MODEL}") == 160 == pretrained_input_size(HUB_MODEL)
    assert pretrained_input_size("hf-hub:timm/not_cached") is None


def test_a_wrong_tag_or_an_architecture_without_weights_is_one_line_before_any_work():
    from kdcl.run.validate import check_model_node

    with pytest.raises(KdclError, match=r"teacher.name 'resnet18.bogus': timm has no such pretrained tag; its tags: "
                                        r"resnet18\.a1_in1k"):  # fmt: skip
        check_model_node({"name": "resnet18.bogus", "pretrained": True}, "teacher")
    with pytest.raises(KdclError, match=r"student.name 'botnet50ts_256' has no pretrained weights in timm; set "
                                        r"student.pretrained=false"):  # fmt: skip
        check_model_node({"name": "botnet50ts_256", "pretrained": True}, "student")

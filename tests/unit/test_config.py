"""Real Hydra composition of every shipped option, and the config check's one-line errors."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from kdcl.common.errors import KdclError
from kdcl.config.compose import config_dir
from kdcl.config.schema import TrainConfig
from kdcl.config.upgrade import check_renamed, renamed, upgrade_saved
from kdcl.curriculum.pacing import fraction
from kdcl.run.plan import plan_stages
from kdcl.run.validate import check_config

GROUPS = ["data", "teacher", "student", "distill", "curriculum", "pipeline", "optim", "trainer", "logger", "experiment",
          "debug"]  # fmt: skip


def make(overrides=()):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def options(group):
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def test_required_groups_exist():
    for group in GROUPS + ["paths", "hydra"]:
        assert options(group), group


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_passes_the_check(group, option):
    folder = {
        ("data", "image_folder"),
        ("data", "prepared"),
        ("experiment", "folder_pretrained_to_mobile"),
    }  # needs a root
    extra = ["data.root=/tmp"] if (group, option) in folder else []
    cfg = make([f"{group}={option}", *extra])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(KdclError, match="use trainer=cpu"):  # refused up front, not mid-run
            check_config(cfg)
    elif (group, option) == ("distill", "crd"):  # the paper's 16384 negatives: more than the default digits hold
        with pytest.raises(KdclError, match=r"set distill\.terms\.crd\.negatives ≤ \d+$"):
            check_config(cfg)
    else:
        check_config(cfg)


# Each curriculum preset's share of the data halfway to full_at (step 40 of 100 with full_at 0.8; exponential:
# step 40 of its step_length 20), worked out by hand from the formula its YAML comment names.
HALFWAY = {
    "none": 1.0,
    "linear": 0.2 + 0.8 * 0.5,  # 0.6
    "root": (0.2**2 + (1 - 0.2**2) * 0.5) ** 0.5,  # sqrt(0.52) = 0.7211
    "geometric": 0.2**0.5,  # 0.4472
    "step": 0.2 + 0.8 * 2 / 4,  # two of four jumps: 0.6
    "exponential": 0.1 * 1.9**2,  # 0.361
}


@pytest.mark.parametrize("preset", options("curriculum"))
def test_every_curriculum_preset_paces_as_its_formula_says(preset):
    c = make([f"curriculum={preset}"]).curriculum
    assert c.pacing == preset
    assert fraction(c.pacing, 40, 100, c.start, c.full_at, **c.params) == pytest.approx(HALFWAY[preset], abs=1e-4)
    assert fraction(c.pacing, 100, 100, c.start, c.full_at, **c.params) == 1.0  # all data by the stage's end


def test_aliases_name_the_right_timm_models():
    cfg = make(["teacher=resnet50", "student=mobilenet"])
    assert cfg.teacher.name == "resnet50" and cfg.student.name == "mobilenetv3_small_100"
    assert make(["teacher=resnet18", "student=resnet18"]).student.name == "resnet18"


def test_standard_pipeline_distills_the_trained_teacher():
    stages = plan_stages(make())
    assert [s.name for s in stages] == ["teacher", "student"]
    assert stages[1].teachers == ("teacher",) and "kd" in stages[1].terms
    assert stages[0].terms == {"ce": {"weight": 1.0}}
    assert [s.name for s in plan_stages(make(["pipeline=baseline"]))] == ["student"]


def test_temperature_override_reaches_the_kd_term():
    cfg = make(["distill.temperature=2"])
    assert plan_stages(cfg)[1].terms["kd"]["temperature"] == 2


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("distill.temperature=-1", "distill.temperature=-1"),
        ("distill.terms.kd.weight=-0.5", "distill.terms.kd.weight=-0.5 must be a number ≥ 0"),
        ("trainer.max_epochs=0", "epochs=0 must be an integer ≥ 1"),
        ("data.fraction=0", "data.fraction=0 must be a fraction in (0, 1]"),
        ("data.fraction=1.5", "data.fraction=1.5 must be a fraction in (0, 1]"),
        ("data.val_fraction=1", "data.val_fraction=1 must be a fraction in [0, 1)"),
        ("teacher.name=resnet500", "teacher.name 'resnet500' is not a timm model; did you mean resnet50"),
        ("optim.lr=0", "optim.lr=0 must be > 0"),
        ("pipeline.epochs=3", "pipeline.epochs is not used by a pipeline of explicit stages"),  # not ignored
        ("data.num_classes=5", "data.num_classes is a setting of data=synthetic only"),
        ("trainer.precision=17", "trainer.precision=17 is not a precision Lightning knows"),
        ("data.root=/nonexistent/kdcl", "data.root '/nonexistent/kdcl' does not exist"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(KdclError) as err:
        check_config(make([override]))
    assert fragment in str(err.value)


def test_missing_mandatory_value_is_named():
    with pytest.raises(KdclError, match="data.root is required"):
        check_config(make(["data=image_folder"]))


def test_debug_fast_shortens_every_stage(tmp_path):
    from kdcl.training.trainer import build_trainer

    cfg = make(["debug=fast", "pipeline=takd", "trainer=cpu"])  # teacher → assistant → student
    stages = plan_stages(cfg)
    assert len(stages) == 3
    for s in stages:  # each stage's Trainer as the stage runner builds it: its epochs and batch limits
        trainer = build_trainer(cfg.trainer, stage_name=s.name, root_dir=tmp_path, max_epochs=s.epochs)
        assert (trainer.max_epochs, trainer.limit_train_batches, trainer.limit_val_batches) == (1, 5, 2), s.name


def test_a_config_saved_before_the_trainer_spec_still_resumes():
    # config.yaml of a run made when kdcl's own switches lived in `trainer` (no _target_)
    saved = OmegaConf.to_container(make(), resolve=True, enum_to_str=True)
    for key in ("progress_bar", "speed"):
        del saved[key]
    del saved["trainer"]["_target_"]
    saved["trainer"].update(progress_bar="lines", channels_last=True, compile=False)
    upgraded = upgrade_saved(OmegaConf.create(saved))
    assert upgraded.trainer._target_ == "pytorch_lightning.Trainer"
    assert upgraded.progress_bar == "lines" and upgraded.speed.channels_last is True
    assert not {"progress_bar", "channels_last", "compile"} & set(upgraded.trainer)
    check_config(upgraded)  # Lightning accepts the spec as it is now


def old_latency_node(saved: dict) -> dict:
    """`saved` as a run written before issue 23 stored it: `report: {latency_batches, ...}`."""
    new = saved.pop("latency")
    saved["report"] = {"latency_batches": new["batches"], "latency_runtimes": new["runtimes"],
                       "speedup_runtime": new["speedup_runtime"]}  # fmt: skip
    return saved


def test_a_config_saved_before_the_latency_rename_resumes_with_its_values_under_latency():
    saved = OmegaConf.to_container(make(["latency.batches=[1,4]", "latency.runtimes=[eager]",
                                         "latency.speedup_runtime=eager"]), resolve=True, enum_to_str=True)  # fmt: skip
    old = OmegaConf.create(old_latency_node(saved))
    with pytest.raises(ConfigKeyError, match="Key 'report' not in 'TrainConfig'"):  # why the upgrade is needed
        OmegaConf.merge(OmegaConf.structured(TrainConfig), old)
    upgraded = upgrade_saved(old)
    assert "report" not in upgraded and "report" in old  # the caller's config is left as it was
    assert OmegaConf.to_container(upgraded.latency) == {"batches": [1, 4], "runtimes": ["eager"],
                                                        "speedup_runtime": "eager"}  # fmt: skip
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), upgraded)  # as `kdcl train resume=` merges it
    assert merged.latency.batches == [1, 4] and str(merged.latency.speedup_runtime) == "eager"
    check_config(merged)


def test_a_run_saved_before_the_fused_optimizer_resumes_with_the_loop_it_started_with():
    saved = OmegaConf.to_container(make(), resolve=True, enum_to_str=True)
    del saved["optim"]["fused"]
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), upgrade_saved(OmegaConf.create(saved)))
    assert merged.optim.fused is False
    assert make().optim.fused is True and make(["optim.fused=false"]).optim.fused is False


def test_the_oldest_configs_get_every_upgrade_and_todays_are_left_alone():
    saved = old_latency_node(OmegaConf.to_container(make(), resolve=True, enum_to_str=True))
    saved["trainer"].pop("_target_")
    del saved["optim"]["fused"]
    upgraded = upgrade_saved(OmegaConf.create(saved))
    assert upgraded.trainer._target_ == "pytorch_lightning.Trainer" and upgraded.latency.batches == [1, 64]
    assert upgraded.optim.fused is False
    today = make()
    assert upgrade_saved(today) is today


@pytest.mark.parametrize(
    ("override", "new"),
    [
        ("report.latency_batches=[1]", "latency.batches=[1]"),
        ("report.latency_runtimes=[eager]", "latency.runtimes=[eager]"),
        ("report.speedup_runtime=eager,onnxruntime", "latency.speedup_runtime=eager,onnxruntime"),
        ("~report", "~latency"),
        ("+report.latency_batches=[]", "latency.batches=[]"),
        ("++report.speedup_runtime=eager", "latency.speedup_runtime=eager"),
        ("latency.batches=[1]", None),
        ("report=x", "latency=x"),
        ("distill.temperature=4", None),
    ],
)
def test_an_old_key_is_spelled_anew(override, new):
    assert renamed(override) == new


def test_an_old_key_on_the_command_line_is_one_line_naming_the_new_one():
    with pytest.raises(KdclError) as err:
        check_renamed(["seed=1", "report.latency_batches=[1]"])
    assert str(err.value) == "report.latency_batches was renamed: use latency.batches=[1]"
    check_renamed(["latency.batches=[1]", "seed=1"])


def test_settings_nothing_reads_are_refused_not_ignored():
    with pytest.raises(KdclError, match="pipeline.anchors is not used by kind=takd"):
        check_config(make(["pipeline=takd", "pipeline.anchors=5"]))

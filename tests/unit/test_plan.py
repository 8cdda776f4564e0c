"""Pipeline presets become the right stages; bad pipeline settings are one clear error."""

import pytest
from hydra import compose, initialize_config_dir

from kdcl.common.errors import KdclError
from kdcl.config.compose import config_dir
from kdcl.run.plan import plan_stages, split_ref
from kdcl.run.presets import task_classes
from kdcl.run.validate import check_config


def plan(*overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    return {s.name: s for s in plan_stages(cfg)}


def test_takd_chains_and_dgkd_densely_guides():
    chain = plan("teacher=resnet50", "pipeline=takd", "pipeline.assistants=[resnet34,resnet18]")
    assert [(n, s.model["name"], s.teachers) for n, s in chain.items()] == [
        ("teacher", "resnet50", ()),
        ("assistant1", "resnet34", ("teacher",)),
        ("assistant2", "resnet18", ("assistant1",)),
        ("student", "mobilenetv3_small_100", ("assistant2",)),
    ]
    dense = plan("pipeline=dgkd", "pipeline.assistants=[resnet34,resnet18]")
    assert dense["student"].teachers == ("teacher", "assistant1", "assistant2")
    assert dense["assistant2"].teachers == ("teacher", "assistant1")


def test_anchors_sit_along_the_teachers_route_and_it_keeps_those_checkpoints():
    s = plan("pipeline=anchors", "trainer.max_epochs=9", "pipeline.anchors=3")
    assert [x.teachers for x in s.values()] == [(), ("teacher@3",), ("teacher@6",), ("teacher",)]
    assert s["teacher"].save_epochs == (3, 6)
    assert [x.epochs for x in s.values()] == [9, 3, 3, 3]  # the student's budget split over the anchors
    assert s["student_anchor2"].init == "student_anchor1" and s["student"].init == "student_anchor2"
    assert s["student_anchor1"].select == "last"


def test_born_again_and_finetune():
    s = plan("pipeline=born_again", "pipeline.generations=2", "pipeline.finetune=true", "trainer.max_epochs=4")
    assert list(s) == ["gen0", "gen1", "gen2", "finetune"]
    assert {x.model["name"] for x in s.values()} == {"mobilenetv3_small_100"}
    ft = s["finetune"]
    assert ft.init == "gen2" and ft.teachers == () and ft.lr_scale == 0.1 and ft.epochs == 2
    assert list(ft.terms) == ["ce"]


def test_lifelong_tasks_split_the_classes_and_distil_only_with_weight():
    s = plan("pipeline=lifelong", "pipeline.tasks=3")
    assert list(s) == ["task1", "task2", "task3"]
    assert s["task2"].teachers == ("task1",) and s["task2"].init == "task1" and "kd" in s["task2"].terms
    assert task_classes(s["task1"].task, 10) == ([0, 1, 2], [0, 1, 2], [])
    assert task_classes(s["task2"].task, 10) == ([3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6], [0, 1, 2])
    assert task_classes(s["task3"].task, 10)[0] == [7, 8, 9]
    control = plan("pipeline=lifelong", "pipeline.distill_weight=0")
    assert control["task2"].teachers == () and list(control["task2"].terms) == ["ce"]
    explicit = plan("pipeline=lifelong", "pipeline.task_classes=[[9,8],[0,1,2]]")
    assert task_classes(explicit["task2"].task, 10) == ([0, 1, 2], [9, 8, 0, 1, 2], [9, 8])
    with pytest.raises(KdclError, match="distinct classes"):
        task_classes(explicit["task2"].task, 5)


def test_teacher_references():
    assert split_ref("teacher") == ("teacher", None) and split_ref("teacher@3") == ("teacher", 3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["pipeline=takd", "pipeline.assistants=[]"], "pipeline.assistants=[] must list at least one timm model"),
        (["pipeline=takd", "pipeline.assistants=[resnet500]"], "is not a timm model"),
        (["pipeline=anchors", "pipeline.anchors=0"], "pipeline.anchors=0 must be an integer ≥ 1"),
        (["pipeline=lifelong", "pipeline.distill_weight=-1"], "pipeline.distill_weight=-1"),
        (["+pipeline.stages.student.init=teacher"], "init 'teacher' must be an earlier stage with the same model"),
        (["pipeline.stages.student.teachers=[teacher@99]"], "'teacher@99' must name an epoch 1..10"),
        (["+pipeline.stages.student.lr_scale=0"], "lr_scale=0 must be > 0"),
        (
            ["+pipeline.stages.student.epoch=3"],
            "pipeline.stages.student.epoch is not a stage setting; did you mean epochs",
        ),
        (["pipeline.kind=tkd"], "pipeline.kind 'tkd' is unknown; did you mean takd"),
        (["latency.batches=[0]"], "latency.batches=[0] must list batch sizes"),
    ],
)
def test_bad_pipeline_settings_are_one_clear_error(overrides, message):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with pytest.raises(KdclError) as err:
        check_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)

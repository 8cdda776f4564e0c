"""Pipeline presets become the right stages; bad pipeline settings are one clear error."""

import pytest
from hydra import compose, initialize_config_dir

from kdcl.common.errors import KdclError
from kdcl.config.compose import config_dir
from kdcl.run.plan import plan_stages, split_ref
from kdcl.run.presets import ordered, task_classes
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


def test_a_stage_keeps_the_epochs_it_is_told_to_and_those_later_stages_read():
    s = plan("trainer.max_epochs=6", "+pipeline.stages.teacher.keep_epochs=[4,2]", "pipeline.teacher_epoch=3")
    assert s["teacher"].save_epochs == (2, 3, 4)  # 3: the student's teacher@3


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


def route_of(*overrides) -> tuple[dict, list[str]]:
    """pipeline=anchors planned with `overrides`: its stages, and the teacher of each student stage in order."""
    s = plan("pipeline=anchors", "trainer.max_epochs=9", "pipeline.anchors=4", *overrides)
    return s, [x.teachers[0] for x in s.values() if x.model_key == "student"]


def test_anchor_orders_visit_the_same_anchors_forward_reversed_or_shuffled_by_the_seed():
    forward, route = route_of()
    assert route == ["teacher@2", "teacher@4", "teacher@7", "teacher"]  # weak to strong
    reverse, reversed_route = route_of("pipeline.order=reverse")
    assert reversed_route == route[::-1]  # the same anchors, last to first
    assert list(reverse) == list(forward) and [x.init for x in reverse.values()] == [x.init for x in forward.values()]
    assert reverse["teacher"].save_epochs == forward["teacher"].save_epochs == (2, 4, 7)
    orders = {}
    for seed in range(6):
        shuffled, orders[seed] = route_of("pipeline.order=shuffled", f"seed={seed}")
        assert sorted(orders[seed]) == sorted(route) and shuffled["teacher"].save_epochs == (2, 4, 7)  # a permutation
    assert route_of("pipeline.order=shuffled", "seed=3")[1] == orders[3]  # the same seed, the same order
    assert len({tuple(o) for o in orders.values()}) > 2  # not one fixed order: each seed draws its own
    # never the forward route itself (1 draw in 6 would be, with three anchors): the control must differ from the arm
    assert all(ordered(route[:3], "shuffled", seed) != route[:3] for seed in range(200))


def test_matched_anchors_are_the_final_teacher_alone_for_the_same_student_epochs():
    s = plan("pipeline=anchors", "trainer.max_epochs=9", "pipeline.anchors=3", "pipeline.order=matched")
    assert list(s) == ["teacher", "student"]
    student = s["student"]
    assert student.teachers == ("teacher",) and student.match_entropy == ("teacher@3", "teacher@6")
    assert student.epochs == 9  # the forward route's 3 anchors × 3 epochs
    assert s["teacher"].save_epochs == (3, 6)  # the early anchors are still saved, to be measured
    assert student.configured_temperature == 4.0  # distill.temperature
    hotter = student.at_temperature(7.5)
    assert hotter.terms["kd"]["temperature"] == 7.5 and hotter.terms["ce"] == student.terms["ce"]
    assert {t.name: t.params.get("temperature") for t in hotter.loss_terms} == {"ce": None, "kd": 7.5}


def test_early_stopped_teacher_is_one_key_the_same_as_naming_the_epoch():
    named = plan("pipeline.teacher_epoch=3", "trainer.max_epochs=5")
    explicit = plan("pipeline.stages.student.teachers=[teacher@3]", "trainer.max_epochs=5")
    assert named["student"].teachers == explicit["student"].teachers == ("teacher@3",)
    assert named["teacher"].save_epochs == explicit["teacher"].save_epochs == (3,)
    assert plan("trainer.max_epochs=5")["student"].teachers == ("teacher",)  # null: the chosen checkpoint


@pytest.mark.parametrize("kind", ["takd", "dgkd"])
def test_assistants_without_distillation_learn_from_labels_alone(kind):
    control = plan(f"pipeline={kind}", "pipeline.assistants=[resnet34,resnet18]", "pipeline.assistants_distill=false")
    for name in ("assistant1", "assistant2"):
        assert control[name].teachers == () and control[name].terms == {"ce": {"weight": 1.0}}
    distilled = plan(f"pipeline={kind}", "pipeline.assistants=[resnet34,resnet18]")
    assert control["student"].teachers == distilled["student"].teachers  # the student is distilled as before
    assert distilled["assistant2"].teachers and "kd" in distilled["assistant2"].terms


def test_born_again_plain_control_is_one_student_stage_on_labels_for_every_generations_epochs():
    s = plan("pipeline=born_again", "pipeline.generations=2", "pipeline.plain=true", "trainer.max_epochs=4")
    assert list(s) == ["student"] and s["student"].epochs == 12 and s["student"].teachers == ()
    assert list(s["student"].terms) == ["ce"] and s["student"].model["name"] == "mobilenetv3_small_100"


def test_student_epochs_split_over_the_student_stages_for_equal_budgets():
    def student_epochs(*overrides):
        return {n: x.epochs for n, x in plan(*overrides, "trainer.max_epochs=5").items() if x.model_key == "student"}

    total = "pipeline.student_epochs=7"
    assert student_epochs("pipeline=anchors", "pipeline.anchors=3", total) == {
        "student_anchor1": 2, "student_anchor2": 2, "student": 3}  # fmt: skip
    assert student_epochs("pipeline=anchors", "pipeline.order=matched", total) == {"student": 7}
    assert student_epochs("pipeline=born_again", "pipeline.generations=2", total) == {"gen0": 2, "gen1": 2, "gen2": 3}
    assert student_epochs("pipeline=born_again", "pipeline.plain=true", total) == {"student": 7}
    assert student_epochs(total) == student_epochs("pipeline=baseline", total) == {"student": 7}
    takd = plan("pipeline=takd", "trainer.max_epochs=5", total)
    assert takd["student"].epochs == 7 and takd["assistant1"].epochs == takd["teacher"].epochs == 5
    finetuned = plan("pipeline=born_again", "pipeline.generations=1", "pipeline.finetune=true", "trainer.max_epochs=5",
                     "pipeline.student_epochs=6")  # fmt: skip
    assert [x.epochs for x in finetuned.values()] == [3, 3, 2]  # a fine-tune comes on top (half the last stage's)


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
        (
            ["pipeline=anchors", "pipeline.order=sideways"],
            "pipeline.order 'sideways' must be one of forward|reverse|shuffled|matched",
        ),
        (["pipeline=anchors", "pipeline.order=revers"], "did you mean reverse"),
        (
            ["pipeline=anchors", "pipeline.order=matched", "pipeline.anchors=1"],
            "pipeline.order=matched needs an early anchor to match, and anchors=1",
        ),
        (
            ["pipeline=anchors", "pipeline.student_epochs=9", "pipeline.epochs_per_anchor=2"],
            "pipeline.epochs_per_anchor and pipeline.student_epochs both set the student's budget; drop one",
        ),
        (
            ["pipeline=anchors", "pipeline.student_epochs=2"],
            "pipeline.student_epochs=2 must be an integer ≥ 3, an epoch for each student stage (student_anchor1, "
            "student_anchor2, student)",
        ),
        (["pipeline=lifelong", "pipeline.student_epochs=0"], "pipeline.student_epochs=0 must be an integer ≥ 5"),
        (
            ["~pipeline.stages.student", "pipeline.student_epochs=3"],
            "pipeline.student_epochs=3: no stage of this pipeline trains the student (model: student); drop it",
        ),
        (["pipeline.teacher_epoch=0"], "pipeline.teacher_epoch=0 must be an integer ≥ 1"),
        (["pipeline.teacher_epoch=11"], "pipeline.teacher_epoch=11 must be 1..10, the epochs stage 'teacher' trains"),
        (
            ["pipeline=baseline", "pipeline.teacher_epoch=2"],
            "pipeline.teacher_epoch=2 needs a last stage whose teachers are stage names; pipeline.stages.student.teachers "
            "is []",
        ),
        (
            ["pipeline.teacher_epoch=2", "pipeline.stages.student.teachers=[teacher@3]"],
            "pipeline.teacher_epoch=2 needs a last stage whose teachers are stage names",
        ),
        (["pipeline=takd", "pipeline.teacher_epoch=2"], "pipeline.teacher_epoch is not used by kind=takd"),
        (
            ["pipeline=born_again", "pipeline.assistants_distill=false"],
            "pipeline.assistants_distill is not used by kind=born_again",
        ),
        (["pipeline=anchors", "pipeline.plain=true"], "pipeline.plain is not used by kind=anchors"),
        (
            ["+pipeline.stages.student.match_entropy=[teacher@2]", "distill=none"],
            "pipeline.stages.student.match_entropy needs a term with a temperature (kd, dkd, dist, lskd)",
        ),
        (
            ["+pipeline.stages.student.match_entropy=[teacher@20]"],
            "pipeline.stages.student.match_entropy: 'teacher@20' must name an epoch 1..10",
        ),
        (
            ["+pipeline.stages.teacher.keep_epochs=[3,11]"],
            "pipeline.stages.teacher.keep_epochs=[3, 11] must list epochs 1..10 of the stage",
        ),
        (["+pipeline.stages.teacher.keep_epochs=two"], "pipeline.stages.teacher.keep_epochs=two must list epochs"),
        (
            ["+pipeline.stages.teacher.keep_epochs=[2]", "teacher.checkpoint=/data/teacher.ckpt"],
            "pipeline.stages.teacher.keep_epochs: teacher.checkpoint is given, so the stage trains no epoch to keep",
        ),
    ],
)
def test_bad_pipeline_settings_are_one_clear_error(overrides, message):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with pytest.raises(KdclError) as err:
        check_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)

"""`kdcl report`: jobs grouped by their overrides without the seed, accuracy mean ± sample std."""

import json
import statistics

import pytest
import yaml

from kdcl.common.errors import KdclError
from kdcl.reporting.compare import write_report
from kdcl.reporting.compare_stats import baseline_row


def latency(**ms: float) -> dict:
    """A stage's recorded latency in ONNX Runtime: {"b1": 0.5} → batch 1 took 0.5 ms."""
    timings = {b.removeprefix("b"): {"median_ms": v, "spread_ms": 0.01, "repeats": 50} for b, v in ms.items()}
    return {"onnxruntime": {"runtime": "onnxruntime", "version": "onnxruntime 1", "threads": 2, "ms": timings}}


def fake_job(root, num, overrides, seed, teacher_acc, student_acc, student_ms=None):
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}", "progress_bar=lines"]))
    stages = [
        {"name": "teacher", "model": "resnet18", "params": 11_000_000, "test_acc": teacher_acc},
        {"name": "student", "model": "mobilenetv3_small_100", "params": 1_500_000, "test_acc": student_acc},
    ]
    summary = {"seed": seed, "stages": stages}
    if student_ms is not None:  # as kdcl train writes it: the speed-up against the teacher, in ONNX Runtime
        stages[0]["latency"], stages[1]["latency"] = latency(b1=0.5, b64=20.0), latency(b1=student_ms, b64=5.0)
        stages[1]["speedup"] = {"1": 0.5 / student_ms, "64": 4.0}
        summary["speedup_runtime"] = "onnxruntime"
    (job / "summary.json").write_text(json.dumps(summary))


def test_report_groups_by_overrides_and_averages_over_seeds(tmp_path):
    accs = {"distill=kd": [0.90, 0.92, 0.97], "distill=none": [0.80, 0.84, 0.85]}
    num = 0
    for setting, values in accs.items():
        for seed, acc in enumerate(values):
            fake_job(tmp_path, num, [setting], seed, 0.98, acc)
            num += 1
    rows = {r["settings"]: r for r in write_report(tmp_path)}
    assert set(rows) == set(accs)
    for setting, values in accs.items():
        assert rows[setting]["runs"] == 3 and rows[setting]["seeds"] == [0, 1, 2]
        mean, std = rows[setting]["student"]
        assert mean == pytest.approx(sum(values) / 3) and std == pytest.approx(statistics.stdev(values))
    md = (tmp_path / "report.md").read_text()
    assert "| distill=kd | 3 | 98.00 ± 0.00 | 93.00 ± 3.61 |" in md
    assert (tmp_path / "report.png").is_file() and len((tmp_path / "report.csv").read_text().splitlines()) == 3


def test_report_shows_the_final_models_latency_and_speed_up_median_over_runs(tmp_path):
    for seed, ms in enumerate([0.2, 0.25, 0.3]):
        fake_job(tmp_path, seed, ["distill=kd"], seed, 0.98, 0.95, student_ms=ms)
    fake_job(tmp_path, 3, ["distill=none"], 0, 0.98, 0.90)  # a run written before latency was recorded
    rows = {r["settings"]: r for r in write_report(tmp_path)}
    kd = rows["distill=kd"]
    assert kd["runtime"] == "onnxruntime" and kd["final_ms"] == {"1": 0.25, "64": 5.0}
    assert kd["speedup"] == {"1": pytest.approx(2.0), "64": pytest.approx(4.0)}
    assert rows["distill=none"]["final_ms"] == {} and rows["distill=none"]["runtime"] == "-"
    md = (tmp_path / "report.md").read_text()
    assert "| runtime | ms@1 | ms@64 | speed-up@1 | speed-up@64 |" in md
    assert "| onnxruntime | 0.25 | 5.0 | 2.0× | 4.0× |" in md and "| - | - | - | - | - |" in md


def test_runs_written_before_a_key_was_renamed_group_with_todays(tmp_path):
    fake_job(tmp_path, 0, ["distill=kd", "report.latency_batches=[]"], 0, 0.98, 0.90)  # before issue 23
    fake_job(tmp_path, 1, ["distill=kd", "latency.batches=[]"], 1, 0.98, 0.92)
    fake_job(tmp_path, 2, ["distill=none", "latency.batches=[]"], 0, 0.98, 0.80)
    rows = {r["settings"]: r for r in write_report(tmp_path)}
    assert set(rows) == {"distill=kd", "distill=none"} and rows["distill=kd"]["runs"] == 2
    assert rows["distill=kd"]["overrides"] == ["distill=kd", "latency.batches=[]"]
    assert baseline_row(list(rows.values()), "distill=kd report.latency_batches=[]") is rows["distill=kd"]


def test_report_on_a_folder_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(KdclError, match="no finished runs"):
        write_report(tmp_path)


def sweep_with_last(root, accs: dict[str, list[tuple[float, float]]]):
    """One fake job per (setting, seed): the student's chosen and last-epoch accuracy."""
    num = 0
    for setting, values in accs.items():
        for seed, (chosen, last) in enumerate(values):
            fake_job(root, num, ["distill=kd", setting], seed, 0.98, chosen)
            summary = json.loads((root / str(num) / "summary.json").read_text())
            summary["stages"][1]["test_acc_last"] = last
            (root / str(num) / "summary.json").write_text(json.dumps(summary))
            num += 1


def test_report_against_a_baseline_matches_scipy_by_hand(tmp_path, capsys):
    from scipy import stats

    accs = {
        "curriculum=none": [(0.80, 0.79), (0.82, 0.80), (0.78, 0.78)],
        "curriculum=linear": [(0.83, 0.80), (0.84, 0.83), (0.80, 0.79)],
        "curriculum=root": [(0.79, 0.80), (0.83, 0.81), (0.78, 0.76)],
    }
    sweep_with_last(tmp_path, accs)
    write_report(tmp_path, baseline="curriculum=none")
    report = json.loads((tmp_path / "report.json").read_text())
    got = {(c["settings"], c["metric"]): c for c in report["comparisons"]}
    assert len(got) == 4  # two settings × chosen and last
    for checkpoint, k in (("chosen", 0), ("last", 1)):
        base = [v[k] for v in accs["curriculum=none"]]
        ps = {}
        for setting in ("curriculum=linear", "curriculum=root"):
            x = [v[k] for v in accs[setting]]
            c = got[(setting, checkpoint)]
            diff = [a - b for a, b in zip(x, base, strict=True)]
            low, high = stats.t.interval(0.95, 2, loc=statistics.fmean(diff), scale=stats.sem(diff))
            assert c["paired"]["t_p"] == pytest.approx(stats.ttest_rel(x, base).pvalue)
            assert (c["paired"]["diff"]["mean"], c["paired"]["diff"]["low"], c["paired"]["diff"]["high"]) == (
                pytest.approx(statistics.fmean(diff)), pytest.approx(low), pytest.approx(high))  # fmt: skip
            assert c["paired"]["sign_p"] is None  # three seeds: no exact tests
            ps[setting] = c["paired"]["t_p"]
        m = sorted(ps.values())  # Holm by hand with two tests
        holm = {s: min(1, 2 * p) if p == m[0] else max(min(1, 2 * m[0]), p) for s, p in ps.items()}
        for setting, p in holm.items():
            assert got[(setting, checkpoint)]["holm_p"] == pytest.approx(p)
            assert got[(setting, checkpoint)]["significant"] == (p < 0.05)
    spread = {s["settings"]: s["spread"] for s in report["settings"]}["curriculum=linear"]["last"]
    low, high = stats.t.interval(0.95, 2, loc=statistics.fmean([0.80, 0.83, 0.79]), scale=stats.sem([0.80, 0.83, 0.79]))
    assert (spread["low"], spread["high"]) == (pytest.approx(low), pytest.approx(high))
    out = capsys.readouterr().out
    assert "against baseline curriculum=none" in out and "Against the baseline" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    ("baseline", "message"),
    [("curriculum=anti", "is not a setting of this sweep"), ("distill=kd", "matches 3 settings")],
)
def test_a_baseline_that_is_not_one_setting_is_one_line_and_exit_2(tmp_path, kdcl_main, baseline, message):
    sweep_with_last(tmp_path, {s: [(0.8, 0.8), (0.81, 0.8)] for s in ("curriculum=none", "curriculum=linear",
                                                                        "curriculum=root")})  # fmt: skip
    proc = kdcl_main(["report", str(tmp_path), f"baseline={baseline}"], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "report.md").exists()  # refused before anything is written


def with_curve(root, num, curve: list[float], epochs: int):
    """Job `num`'s student with a validation curve and its speed metrics, written as kdcl train writes them."""
    from kdcl.reporting.speed import LearningSpeed

    summary = json.loads((root / str(num) / "summary.json").read_text())
    summary["stages"][1].update(LearningSpeed.from_curve(curve, epochs).to_json())
    (root / str(num) / "summary.json").write_text(json.dumps(summary))


CURVES = {  # setting → per seed, the student's validation accuracy after each of its four epochs
    "distill=none": [[0.30, 0.50, 0.60, 0.70], [0.20, 0.45, 0.65, 0.72], [0.25, 0.40, 0.62, 0.69]],
    "distill=kd": [[0.50, 0.65, 0.70, 0.74], [0.45, 0.60, 0.69, 0.71], [0.52, 0.62, 0.72, 0.75]],
}


def test_report_shows_learning_speed_with_paired_statistics_and_the_curves(tmp_path):
    from scipy import stats

    num = 0
    for setting, curves in CURVES.items():
        for seed, curve in enumerate(curves):
            fake_job(tmp_path, num, [setting], seed, 0.98, 0.80 + 0.01 * seed)
            with_curve(tmp_path, num, curve, 4)
            num += 1
    write_report(tmp_path, baseline="distill=none")
    md = (tmp_path / "report.md").read_text()
    assert "| params (M) | val AUC % | val@25 % | val@50 % | val@100 % | runtime |" in md
    auc = {s: [statistics.fmean(c) for c in curves] for s, curves in CURVES.items()}  # step rule: the mean
    at50 = [c[1] for c in CURVES["distill=kd"]]  # 50 % of 4 epochs: epoch 2
    cells = [f"{100 * statistics.fmean(v):.2f} ± {100 * statistics.stdev(v):.2f}"
             for v in (auc["distill=kd"], [c[0] for c in CURVES["distill=kd"]], at50, [c[3] for c in CURVES["distill=kd"]])]  # fmt: skip
    assert f"| {' | '.join(cells)} |" in md
    report = json.loads((tmp_path / "report.json").read_text())
    got = {(c["settings"], c["metric"]): c for c in report["comparisons"]}
    assert set(got) == {("distill=kd", m) for m in ("chosen", "val_auc", "val_acc_at_25", "val_acc_at_50",
                                                    "val_acc_at_100")}  # fmt: skip
    c = got[("distill=kd", "val_auc")]
    diff = [a - b for a, b in zip(auc["distill=kd"], auc["distill=none"], strict=True)]
    assert c["paired"]["diff"]["mean"] == pytest.approx(statistics.fmean(diff))
    assert c["paired"]["t_p"] == pytest.approx(stats.ttest_rel(auc["distill=kd"], auc["distill=none"]).pvalue)
    assert c["holm_p"] == pytest.approx(c["paired"]["t_p"])  # one setting against the baseline: nothing to correct
    assert "| distill=kd | val_auc | 3 |" in md
    settings = {s["settings"]: s for s in report["settings"]}
    assert settings["distill=kd"]["curves"]["1"] == CURVES["distill=kd"][1]
    header = (tmp_path / "report.csv").read_text().splitlines()[0].split(",")
    assert {"final_val_auc_mean", "final_val_auc_std", "final_val_acc_at_25_mean"} <= set(header)
    assert (tmp_path / "report_curves.png").stat().st_size > 0


def test_runs_without_a_curve_report_a_dash_for_learning_speed(tmp_path):
    fake_job(tmp_path, 0, ["distill=kd"], 0, 0.98, 0.90)  # written before the curve was kept
    fake_job(tmp_path, 1, ["distill=kd"], 1, 0.98, 0.93)
    fake_job(tmp_path, 2, ["distill=none"], 0, 0.98, 0.80)
    fake_job(tmp_path, 3, ["distill=none"], 1, 0.98, 0.82)
    rows = {r["settings"]: r for r in write_report(tmp_path, baseline="distill=none")}
    assert rows["distill=kd"]["final_spread"]["val_auc"] is None
    md = (tmp_path / "report.md").read_text()
    assert "| 1.50 | - | - | - | - |" in md  # params (M), then the four speed columns
    report = json.loads((tmp_path / "report.json").read_text())
    assert {c["metric"] for c in report["comparisons"]} == {"chosen"}  # no speed to pair, no test of nothing
    assert not (tmp_path / "report_curves.png").exists() and (tmp_path / "report.png").is_file()

    with_curve(tmp_path, 1, [0.5, 0.9], 2)  # a newer run beside older ones of the same setting: its curve alone
    rows = {r["settings"]: r for r in write_report(tmp_path)}
    assert rows["distill=kd"]["final_spread"]["val_auc"].mean == pytest.approx(0.7)
    assert "| 1.50 | 70.00 | 50.00 | 50.00 | 90.00 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report_curves.png").is_file()


def test_learning_speed_is_the_students_over_its_whole_chain_of_stages(tmp_path):
    """An anchors run trains its student in three stages, each from the one before (`init`): the student's curve
    and speed run over all of them, not over the last stage's share of the budget."""
    from kdcl.reporting.speed import LearningSpeed

    for seed in (0, 1):
        fake_job(tmp_path, seed, ["pipeline=anchors"], seed, 0.98, 0.80)
        summary = json.loads((tmp_path / str(seed) / "summary.json").read_text())
        teacher, student = summary["stages"]
        anchors = [{**student, "name": f"student_anchor{k}", "test_acc": 0.5, "epochs": 1, "val_curve": [curve],
                    "init": f"student_anchor{k - 1}" if k > 1 else None} for k, curve in ((1, 0.4), (2, 0.5))]  # fmt: skip
        student.update(init="student_anchor2", epochs=2, **LearningSpeed.from_curve([0.6, (0.7, 0.8)[seed]]).to_json())
        summary["stages"] = [teacher, *anchors, student]
        (tmp_path / str(seed) / "summary.json").write_text(json.dumps(summary))
    [row] = write_report(tmp_path)
    chained = {0: [0.4, 0.5, 0.6, 0.7], 1: [0.4, 0.5, 0.6, 0.8]}
    assert row["final_curves"] == chained
    seeds = row["final_seeds"]
    assert seeds["val_auc"] == pytest.approx({s: statistics.fmean(c) for s, c in chained.items()})
    assert seeds["val_acc_at_25"] == {0: 0.4, 1: 0.4}  # 25 % of the student's 4 epochs: after the first anchor
    assert seeds["val_acc_at_50"] == {0: 0.5, 1: 0.5}
    assert seeds["val_acc_at_100"] == {0: 0.7, 1: 0.8}

    from kdcl.reporting.compare import curve_of

    stopped = {"stages": [{"name": "a", "epochs": 3, "val_curve": [0.4], "init": None},  # stopped after epoch 1
                          {"name": "b", "epochs": 2, "val_curve": [0.6, 0.7], "init": "a"}]}  # fmt: skip
    assert curve_of(stopped, "b") == [0.4, None, None, 0.6, 0.7]  # b's epochs stay the chain's epochs 4 and 5


def test_a_baseline_matches_the_setting_however_hydra_wrote_its_value_back(tmp_path):
    """A sweep records `pipeline.plain=true` as `pipeline.plain=True` (Hydra writes the parsed value back): the
    baseline a user types, in either spelling, names that setting."""
    for seed in (0, 1):
        fake_job(tmp_path, seed, ["pipeline=born_again", "pipeline.plain=True"], seed, 0.98, 0.80 + 0.01 * seed)
        fake_job(tmp_path, 2 + seed, ["pipeline=born_again", "pipeline.plain=False"], seed, 0.98, 0.85)
    for typed in ("pipeline.plain=true", "pipeline.plain=True"):
        rows = write_report(tmp_path, baseline=typed)
        base = baseline_row(rows, typed)
        assert "pipeline.plain=True" in base["overrides"] and base["final_seeds"]["chosen"] == {0: 0.80, 1: 0.81}


def test_failed_jobs_are_found_at_any_depth_and_named_by_hydras_job_number(tmp_path):
    from kdcl.reporting.jobs import job_label
    from kdcl.reporting.search import failed_jobs

    def failed(job, num=None):
        if num is not None:  # as Hydra writes a job's directory: .hydra/ with its number and overrides
            (job / ".hydra").mkdir(parents=True)
            (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
            (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={num}"]))
        job.mkdir(parents=True, exist_ok=True)
        (job / "failure.json").write_text(json.dumps({"exit_status": 2, "error": f"broke {job.name}"}))

    failed(tmp_path / "sweep" / "2")  # Hydra's default layout, even without .hydra/ (hydra.output_subdir=null)
    failed(tmp_path / "arms" / "kd" / "s3", num=3)  # hydra.sweep.subdir=s${seed}, one sweep per arm
    (tmp_path / "arms" / "kd" / "s4" / ".hydra").mkdir(parents=True)  # a job that did not fail
    (tmp_path / "arms" / "kd" / "s4" / ".hydra" / "overrides.yaml").write_text("[]")
    assert [job_label(j) for j in failed_jobs(tmp_path / "sweep")] == ["#2"]
    nested = failed_jobs(tmp_path / "arms")
    assert [(job_label(j), j["overrides"], j["error"]) for j in nested] == [("#3 (kd/s3)", ["seed=3"], "broke s3")]

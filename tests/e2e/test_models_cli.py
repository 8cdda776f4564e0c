from tests.conftest import run_kdcl


def test_models_lists_timm_names_and_our_aliases(tmp_path):
    proc = run_kdcl(["models", "mobilenetv3*"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "student=mobilenet" in proc.stdout and "mobilenetv3_small_100" in proc.stdout
    assert "mobilenetv3_large_100" in proc.stdout
    assert "resnet50" not in proc.stdout


def test_models_with_no_match_is_a_clear_error(tmp_path):
    proc = run_kdcl(["models", "nosuchnet*"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no timm model matches")

"""`kdcl models`: timm names and kdcl's aliases (in this process: it only lists)."""


def test_models_lists_timm_names_and_our_aliases(tmp_path, kdcl_main):
    result = kdcl_main(["models", "mobilenetv3*"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "student=mobilenet" in result.stdout and "mobilenetv3_small_100" in result.stdout
    assert "mobilenetv3_large_100" in result.stdout
    assert "resnet50" not in result.stdout


def test_models_with_no_match_is_a_clear_error(tmp_path, kdcl_main):
    result = kdcl_main(["models", "nosuchnet*"], tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: no timm model matches")
    assert len(result.stderr.strip().splitlines()) == 1

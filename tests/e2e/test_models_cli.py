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


def test_models_cost_shows_params_macs_and_latency_in_both_runtimes(tmp_path, kdcl_main):
    import timm

    result = kdcl_main(["models", "test_resnet", "--cost", "latency.batches=[1,4]"], tmp_path)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "MMACs" in line)
    assert [h.strip() for h in header.strip("┃│ ").split("┃")] == [
        "model", "params", "MMACs", "ort ms@1", "ort ms@4", "eager ms@1", "eager ms@4"]  # fmt: skip
    row = next(line for line in result.stdout.splitlines() if line.strip("│ ").startswith("test_resnet "))
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    params = sum(p.numel() for p in timm.create_model("test_resnet", num_classes=10, in_chans=1).parameters())
    assert cells[1] == f"{params / 1e6:.2f} M" and float(cells[2]) > 0  # digits: 10 classes, 1 channel
    assert all(float(ms) > 0 for ms in cells[3:])

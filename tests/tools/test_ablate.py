"""tools/ablate.py: run plan, result reading and mean ± std aggregation (no training)."""
import json
import math
import os

import pytest

from tests.conftest import load_tool

ablate = load_tool("ablate")


def _write(folder, box, mask):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ablate.RESULT_FILE), "w") as f:
        json.dump({"bbox": {"AP": box, "AP50": 1.0}, "segm": {"AP": mask}}, f)


def test_plan_orders_baselines_first_and_points_the_teacher_at_its_seeds_baseline(tmp_path):
    args = ablate.parse_args(["--seeds", "3", "4", "--max-iter", "120",
                              "--output-dir", str(tmp_path), "SOLVER.BASE_LR", "0.01"])
    runs = ablate.plan(args)
    assert [(v.name, s) for v, s, _ in runs] == [
        ("baseline", 3), ("baseline", 4), ("+loss (gt)", 3), ("+loss (gt)", 4),
        ("+loss (teacher)", 3), ("+loss (teacher)", 4),
    ]
    cmd = runs[5][2]
    assert cmd[:2] == ["--config-file", ablate.TEACHER_CONFIG]
    pairs = dict(zip(cmd[2::2], cmd[3::2]))
    assert pairs["SEED"] == "4" and pairs["SOLVER.MAX_ITER"] == "120" and pairs["SOLVER.STEPS"] == "(100,)"
    assert pairs["MODEL.TEACHER.WEIGHTS"] == os.path.join(
        ablate.run_dir(str(tmp_path), ablate.SWEEPS["target"][0], 4), "model_final.pth"
    )
    assert pairs["SOLVER.BASE_LR"] == "0.01"
    assert pairs["OUTPUT_DIR"] == ablate.run_dir(str(tmp_path), runs[5][0], 4)


def test_sweeps_set_the_ablated_key_only():
    args = ablate.parse_args(["--sweep", "structure", "--seeds", "0"])
    structures = [cmd[cmd.index("MODEL.PERCEP.STRUCTURE") + 1] for _, _, cmd in ablate.plan(args)]
    assert structures == ["(1,1,1,1,1)", "(2,2,3,3,3)", "(2,2,4,4,4)"]
    args = ablate.parse_args(["--sweep", "kernel", "--seeds", "0"])
    assert [cmd[cmd.index("MODEL.PERCEP.KERNEL_SIZE") + 1] for _, _, cmd in ablate.plan(args)] == [
        "1", "3", "5", "7"
    ]


def test_aggregate_is_mean_and_sample_std_over_seeds():
    rows = ablate.aggregate({
        "a": [{"bbox/AP": 30.0, "segm/AP": 20.0}, {"bbox/AP": 32.0, "segm/AP": 26.0},
              {"bbox/AP": 34.0, "segm/AP": 23.0}],
        "single": [{"bbox/AP": 40.0, "segm/AP": 35.0}],
        "none": [],
    })
    name, n, box_mean, box_std, mask_mean, mask_std = rows[0]
    assert (name, n, box_mean, mask_mean) == ("a", 3, 32.0, 23.0)
    assert box_std == pytest.approx(2.0) and mask_std == pytest.approx(3.0)
    assert rows[1][:3] == ["single", 1, 40.0] and math.isnan(rows[1][3])
    assert rows[2][1] == 0 and math.isnan(rows[2][2])
    table = ablate.format_table(rows)
    assert "32.00 ± 2.00" in table and "23.00 ± 3.00" in table and "| 40.00 " in table


def test_main_reuses_finished_runs_and_aggregates_them(tmp_path, capsys):
    args = ["--seeds", "0", "1", "--output-dir", str(tmp_path)]
    for (variant, seed, _), box, mask in zip(
        ablate.plan(ablate.parse_args(args)), [30, 31, 33, 35, 32, 32], [25, 27, 28, 28, 26, 30]
    ):
        _write(ablate.run_dir(str(tmp_path), variant, seed), box, mask)
    rows = ablate.main(args)
    assert [r[:3] for r in rows] == [["baseline", 2, 30.5], ["+loss (gt)", 2, 34.0],
                                     ["+loss (teacher)", 2, 32.0]]
    assert [r[4] for r in rows] == [26.0, 28.0, 28.0]
    assert capsys.readouterr().out.count("[reused]") == 6


def test_a_result_file_without_ap_is_named(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ablate.RESULT_FILE).write_text(json.dumps({"bbox": {}}))
    with pytest.raises(ValueError, match="ablate_result.json"):
        ablate.read_result(str(folder))
    assert ablate.read_result(str(tmp_path / "missing")) is None

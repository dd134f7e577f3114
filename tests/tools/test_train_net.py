"""train_net.py end to end on a tiny generated shapes set: train + eval, metrics.json,
checkpoints, --resume, --eval-only, and a 2-process gloo DDP run."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from condinst_percep.config import get_cfg
from condinst_percep.data import generate_shapes
from tests import train_helpers
from tests.conftest import REPO, load_tool
from tests.train_helpers import one_thread, run_main

pytestmark = pytest.mark.slow

BASE_LR, WARMUP_ITERS, WARMUP_FACTOR, STEP, GAMMA, MAX_ITER = 0.01, 3, 0.001, 4, 0.1, 6
EVAL_KEYS = [f"{task}/{m}" for task in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Dataset names ``coco:JSON:IMAGES`` for a 6-image train and a 3-image val set."""
    root = tmp_path_factory.mktemp("shapes")
    names = {}
    for split, n, seed in (("train", 6, 0), ("val", 3, 1)):
        folder = root / split
        json_file = generate_shapes(str(folder), num_images=n, min_size=64, max_size=80, seed=seed, max_objects=2)
        names[split] = f"coco:{json_file}:{folder / 'images'}"
    return names


def tiny_opts(shapes, output_dir, **extra):
    """train_helpers.tiny_opts on ``shapes``' train set, evaluated on its val set, with 64-96 px
    images and this file's schedule (a checkpoint every 3 iterations)."""
    return train_helpers.tiny_opts(shapes["train"], output_dir, **{
        "INPUT.MIN_SIZE_TRAIN": "(64,)",
        "INPUT.MAX_SIZE_TRAIN": 96,
        "INPUT.MIN_SIZE_TEST": 64,
        "INPUT.MAX_SIZE_TEST": 96,
        "DATASETS.TEST": f"('{shapes['val']}',)",
        "SOLVER.BASE_LR": BASE_LR,
        "SOLVER.WARMUP_ITERS": WARMUP_ITERS,
        "SOLVER.WARMUP_FACTOR": WARMUP_FACTOR,
        "SOLVER.STEPS": f"({STEP},)",
        "SOLVER.GAMMA": GAMMA,
        "SOLVER.MAX_ITER": MAX_ITER,
        "SOLVER.CHECKPOINT_PERIOD": 3,
        **extra,
    })


def expected_lr(it):
    warm = WARMUP_FACTOR + (1 - WARMUP_FACTOR) * it / WARMUP_ITERS if it < WARMUP_ITERS else 1.0
    return BASE_LR * warm * (GAMMA if it >= STEP else 1.0)


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    results = run_main(tiny_opts(shapes, out))
    return out, results


def test_train_writes_checkpoints_metrics_and_evaluates(trained):
    out, results = trained
    assert sorted(p for p in os.listdir(out) if p.endswith(".pth")) == ["model_0000002.pth", "model_final.pth"]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == MAX_ITER - 1
    assert list(out.glob("events.out.tfevents.*"))
    assert "Starting training from iteration 0" in (out / "log.txt").read_text()
    assert (out / "inference").is_dir()

    cfg = get_cfg()
    cfg.merge_from_file(str(out / "config.yaml"))  # the dump is a loadable config
    assert cfg.SOLVER.MAX_ITER == MAX_ITER and cfg.MODEL.FPN.OUT_CHANNELS == 64

    lines = read_metrics(out)
    assert [d["iteration"] for d in lines] == [MAX_ITER - 1, MAX_ITER]
    train_line, eval_line = lines
    for key in ("total_loss", "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask",
                "lr", "time", "data_time", "eta_seconds", "max_mem"):
        assert key in train_line, key
    assert train_line["lr"] == pytest.approx(expected_lr(MAX_ITER - 1), rel=1e-9)
    assert train_line["eta_seconds"] == 0.0
    assert set(EVAL_KEYS) <= set(eval_line)
    for key in EVAL_KEYS:
        value = results[key.split("/")[0]][key.split("/")[1]]
        assert eval_line[key] == pytest.approx(value, nan_ok=True)
    assert 0.0 <= eval_line["segm/AP"] <= 100.0


def test_resume_continues_at_next_iteration_with_same_lr_and_weights(trained, shapes, tmp_path):
    out, results = trained
    # A run killed after iteration 2's checkpoint: only that checkpoint is left.
    shutil.copy(out / "model_0000002.pth", tmp_path / "model_0000002.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000002.pth")
    resumed = run_main(["--resume"] + tiny_opts(shapes, tmp_path))

    assert "Starting training from iteration 3" in (tmp_path / "log.txt").read_text()
    lines = read_metrics(tmp_path)
    assert [d["iteration"] for d in lines] == [MAX_ITER - 1, MAX_ITER]
    assert lines[0]["lr"] == pytest.approx(expected_lr(MAX_ITER - 1), rel=1e-9)
    # Same data stream, optimizer momentum and schedule: the uninterrupted run's weights.
    final_a = torch.load(out / "model_final.pth", weights_only=False)
    final_b = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final_b["iteration"] == final_a["iteration"]
    for key, value in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    assert resumed["segm"]["AP"] == pytest.approx(results["segm"]["AP"], abs=1e-6)


def test_eval_only_reproduces_the_final_ap(trained, shapes, tmp_path):
    out, results = trained
    weights = str(out / "model_final.pth")
    again = run_main(["--eval-only"] + tiny_opts(shapes, tmp_path, **{"MODEL.WEIGHTS": weights}))
    for task in ("bbox", "segm"):
        for metric in ("AP", "AP50", "AP75"):
            assert again[task][metric] == pytest.approx(results[task][metric], abs=1e-9)
    assert (tmp_path / "inference").is_dir()
    assert not (tmp_path / "metrics.json").exists()  # evaluation only: nothing trained


def test_command_line_errors_are_clear(shapes, tmp_path):
    with pytest.raises(ValueError, match="--eval-only has no weights"):
        run_main(["--eval-only"] + tiny_opts(shapes, tmp_path))
    fp16 = tiny_opts(shapes, tmp_path, **{"SOLVER.AMP.ENABLED": True, "SOLVER.AMP.DTYPE": "float16"})
    with pytest.raises(ValueError, match="float16.*CUDA"):
        run_main(fp16)


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    sys.path.insert(0, {repo!r})
    import train_net
    from condinst_percep.engine import Trainer, default_argument_parser, launch
    from condinst_percep.utils import comm

    def main(args):
        cfg = train_net.setup(args)
        bad = cfg.clone()
        bad.defrost()
        bad.SOLVER.IMS_PER_BATCH = 3
        try:
            Trainer(bad)
        except ValueError as e:
            message = str(e)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        results = trainer.train()
        params = {{k: v for k, v in trainer.unwrapped_model.named_parameters()}}
        torch.save({{"params": params, "error": message, "world": comm.get_world_size(),
                    "results": results, "batch": len(next(iter(trainer.data_loader)))}},
                   os.path.join(cfg.OUTPUT_DIR, f"rank{{comm.get_rank()}}.pth"))

    if __name__ == "__main__":
        args = default_argument_parser().parse_args()
        launch(main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,))
    """
)


def test_two_process_gloo_ddp_keeps_ranks_identical(shapes, tmp_path):
    script = tmp_path / "ddp_main.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO)))
    out = tmp_path / "out"
    cmd = [sys.executable, str(script), "--num-gpus", "2",
           "--config-file", os.path.join(REPO, "configs/Quickstart/CondInst_shapes.yaml")]
    cmd += tiny_opts(shapes, out, **{"SOLVER.MAX_ITER": 3, "SOLVER.STEPS": "(2,)"})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(out / "rank0.pth", weights_only=False)
    rank1 = torch.load(out / "rank1.pth", weights_only=False)
    assert rank0["world"] == rank1["world"] == 2
    assert rank0["batch"] == rank1["batch"] == 1  # IMS_PER_BATCH 2 is the total
    assert "divisible by the number of processes (2)" in rank0["error"]
    assert rank0["params"].keys() == rank1["params"].keys()
    for key, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][key]), key
    # what rank 0 checkpointed is what both ranks hold
    final = torch.load(out / "model_final.pth", weights_only=False)["model"]
    assert all(torch.equal(final[k], v) for k, v in rank0["params"].items())
    assert "segm" in rank0["results"] and rank1["results"] == {}
    assert read_metrics(out)[-1]["iteration"] == 3


def test_visualize_tool_draws_the_trained_model(trained, shapes, tmp_path):
    import cv2

    out, _ = trained
    visualize = load_tool("visualize")
    image_dir = shapes["val"].rsplit(":", 1)[1]
    common = ["--config-file", os.path.join(REPO, "configs/Quickstart/CondInst_shapes.yaml"),
              "--output", str(tmp_path / "vis"), "--confidence-threshold", "0"]
    # a 6-iteration model scores below FCOS's 0.05 test threshold: lower it to draw something
    opts = ["--opts"] + tiny_opts(
        shapes, tmp_path, **{"MODEL.WEIGHTS": str(out / "model_final.pth"), "MODEL.FCOS.INFERENCE_TH_TEST": 0.0}
    )
    written = visualize.main(common + ["--input", os.path.join(image_dir, "*.jpg")] + opts)
    assert [os.path.basename(p) for p in written] == ["000000.png", "000001.png", "000002.png"]
    for path in written:
        drawn = cv2.imread(path)
        original = cv2.imread(os.path.join(image_dir, os.path.basename(path)[:-4] + ".jpg"))
        assert drawn.shape == original.shape
        assert (drawn != original).any()  # every detection (threshold 0) is drawn
    assert len(visualize.main(common + ["--dataset", shapes["val"], "--num", "2"] + opts)) == 2
    with pytest.raises(FileNotFoundError, match="matches no file"):
        visualize.main(common + ["--input", str(tmp_path / "none*.jpg")] + opts)


def test_sigterm_checkpoints_and_resume_matches_uninterrupted_run(shapes, tmp_path):
    import signal

    # 80 iterations left after the signal: the run cannot finish before it arrives
    max_iter = 100
    opts = tiny_opts(shapes, tmp_path / "killed", **{"SOLVER.MAX_ITER": max_iter, "SOLVER.STEPS": "(70,)",
                                                      "SOLVER.CHECKPOINT_PERIOD": 1000, "DATASETS.TEST": "()"})
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"),
           "--config-file", os.path.join(REPO, "configs/Quickstart/CondInst_shapes.yaml")] + opts
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in proc.stdout:  # the console line of iteration 19: training is under way
            if "iter: 19" in line:
                proc.send_signal(signal.SIGTERM)
                break
        output = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    killed = tmp_path / "killed"
    name = (killed / "last_checkpoint").read_text()
    stopped_after = torch.load(killed / name, weights_only=False)["iteration"]
    assert 19 <= stopped_after < max_iter - 1 and name == f"model_{stopped_after:07d}.pth"
    assert not (killed / "model_final.pth").exists()

    run_main(["--resume"] + opts)
    assert f"Starting training from iteration {stopped_after + 1}" in (killed / "log.txt").read_text()
    straight = tmp_path / "straight"
    run_main(tiny_opts(shapes, straight, **{"SOLVER.MAX_ITER": max_iter, "SOLVER.STEPS": "(70,)",
                                            "SOLVER.CHECKPOINT_PERIOD": 1000, "DATASETS.TEST": "()"}))
    resumed = torch.load(killed / "model_final.pth", weights_only=False)["model"]
    reference = torch.load(straight / "model_final.pth", weights_only=False)["model"]
    for key, value in reference.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-4, atol=1e-6, msg=key)

"""The '_sem' and BiFPN models' state dicts against AdelaiDet's, key for key (names, shapes, dtypes,
order, count, parameter totals), and AdelaiDet-layout '_sem' checkpoints loading into them."""
from pathlib import Path

import pytest
import torch

from condinst_percep.checkpoint import Checkpointer
from condinst_percep.config import get_cfg
from condinst_percep.modeling import build_model

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets" / "adelaidet_state_dicts"
SEM_HEAD = ("mask_branch.seg_head.", "mask_branch.logits.")


def reference(name):
    """([(key, shape, dtype)], total parameters, trainable parameters) from the TSV."""
    lines = (ASSETS / f"{name}.tsv").read_text().splitlines()
    totals = dict(part.split("=") for part in lines[1].split("; ")[1].split()[1:])
    rows = [tuple(line.split("\t")) for line in lines if not line.startswith("#")]
    return rows, int(totals["total"]), int(totals["trainable"])


def model_for(name, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "CondInst" / f"{name}.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return build_model(cfg)


@pytest.mark.parametrize("name", sorted(p.stem for p in ASSETS.glob("*.tsv")))
def test_state_dict_is_adelaidets_key_for_key(name):
    rows, total, trainable = reference(name)
    model = model_for(name)
    ours = [(k, str(tuple(v.shape)), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    assert ours == rows
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable


def _adelaidet_file(tmp_path, name):
    """A checkpoint with the keys and shapes of AdelaiDet's <name> model, random values."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape, dtype in reference(name)[0]:
        dims = tuple(int(s) for s in shape.strip("(,)").split(",") if s.strip())
        if dtype == "float32":
            state[key] = torch.rand(dims, generator=gen) + 0.5
        else:
            state[key] = torch.zeros(dims, dtype=getattr(torch, dtype))
    path = tmp_path / f"{name}.pth"
    torch.save({"model": state, "iteration": 269999}, path)
    return path, state


def test_sem_checkpoint_loads_whole_into_a_sem_model(tmp_path):
    path, state = _adelaidet_file(tmp_path, "MS_R_50_3x_sem")
    model = model_for("MS_R_50_3x_sem")
    checkpointer = Checkpointer(model)
    checkpointer.load(str(path))
    report = checkpointer.last_report
    assert report.skipped == {} and report.missing == [] and report.unexpected == []
    assert report.mismatched == {} and len(report.loaded) == len(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_sem_checkpoint_into_a_model_without_the_head_reports_the_14_keys(tmp_path):
    path, state = _adelaidet_file(tmp_path, "MS_R_50_3x_sem")
    model = model_for("MS_R_50_3x_sem", "MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON", "False")
    checkpointer = Checkpointer(model)
    checkpointer.load(str(path))
    report = checkpointer.last_report
    assert sorted(report.skipped) == sorted(k for k in state if k.startswith(SEM_HEAD))
    assert len(report.skipped) == 14
    assert report.missing == [] and report.unexpected == []
    assert "SEMANTIC_LOSS_ON is off" in report.table()

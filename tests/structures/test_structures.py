import pytest
import torch

from condinst_percep.structures import (
    Instances,
    box_area,
    clip_boxes,
    nonempty_boxes,
    pairwise_iou,
    scale_boxes,
)


def _inst(n=4):
    return Instances(
        (10, 20),
        gt_boxes=torch.arange(n * 4, dtype=torch.float32).reshape(n, 4),
        gt_classes=torch.arange(n),
        names=[f"o{i}" for i in range(n)],
    )


def test_fields_len_and_indexing():
    inst = _inst()
    assert len(inst) == 4 and inst.image_size == (10, 20)
    assert inst.has("gt_classes") and not inst.has("scores")
    assert torch.equal(inst[1].gt_classes, torch.tensor([1]))
    assert torch.equal(inst[-1].gt_classes, torch.tensor([3]))
    assert torch.equal(inst[1:3].gt_classes, torch.tensor([1, 2]))
    assert inst[1:3].names == ["o1", "o2"]
    inst.remove("names")
    assert torch.equal(inst[torch.tensor([True, False, False, True])].gt_classes, torch.tensor([0, 3]))
    assert torch.equal(inst[torch.tensor([2, 0])].gt_boxes[:, 0], torch.tensor([8.0, 0.0]))
    with pytest.raises(IndexError):
        inst[4]
    with pytest.raises(AttributeError, match="scores"):
        inst.scores


def test_set_rejects_wrong_length_naming_the_field():
    inst = _inst()
    with pytest.raises(ValueError, match="scores"):
        inst.scores = torch.zeros(3)
    inst.scores = torch.zeros(4)
    inst.remove("scores")
    assert not inst.has("scores")


def test_cat_and_to():
    a, b = _inst(2), _inst(3)
    c = Instances.cat([a, b])
    assert len(c) == 5
    assert torch.equal(c.gt_classes, torch.tensor([0, 1, 0, 1, 2]))
    assert c.names == ["o0", "o1", "o0", "o1", "o2"]
    assert c.to(torch.float64).gt_boxes.dtype == torch.float64
    with pytest.raises(ValueError, match="image sizes"):
        Instances.cat([a, Instances((5, 5), gt_classes=torch.zeros(1))])
    empty = _inst(0)
    assert len(empty) == 0 and len(Instances.cat([empty, a])) == 2


def test_box_helpers_against_hand_values():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0], [2.0, 1.0, 6.0, 3.0], [10.0, 10.0, 10.0, 12.0]])
    assert torch.equal(box_area(boxes), torch.tensor([8.0, 8.0, 0.0]))
    iou = pairwise_iou(boxes, boxes)
    # overlap of the first two: [2,4]x[1,2] = 2; union 8 + 8 - 2 = 14
    assert iou[0, 1].item() == pytest.approx(2 / 14)
    assert iou[0, 0] == 1 and iou[2, 2] == 0 and iou[0, 2] == 0
    assert torch.equal(nonempty_boxes(boxes), torch.tensor([True, True, False]))
    clipped = clip_boxes(torch.tensor([[-3.0, 2.0, 25.0, 12.0]]), (10, 20))
    assert torch.equal(clipped, torch.tensor([[0.0, 2.0, 20.0, 10.0]]))
    assert torch.equal(scale_boxes(boxes[:1], 2.0, 0.5), torch.tensor([[0.0, 0.0, 8.0, 1.0]]))

from .boxes import box_area, box_iou, clip_boxes, nonempty_boxes, pairwise_iou, scale_boxes
from .instances import Instances

__all__ = ["Instances", "box_area", "box_iou", "clip_boxes", "nonempty_boxes", "pairwise_iou", "scale_boxes"]

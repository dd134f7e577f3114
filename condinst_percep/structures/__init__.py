from .boxes import box_area, box_iou, clip_boxes, nonempty_boxes, pairwise_iou, scale_boxes
from .image_list import pad_to_batch
from .instances import Instances

__all__ = ["Instances", "box_area", "box_iou", "clip_boxes", "nonempty_boxes", "pad_to_batch", "pairwise_iou",
           "scale_boxes"]

"""Input checks of :class:`PerceptualLoss`: clear errors, one device-to-host copy per call."""
import torch
from torch import nn

__all__ = ["check_inputs", "check_map"]


def check_map(name: str, x, in_channels: int) -> None:
    """Raises ValueError unless ``x`` is a 4-D (N, C, H, W) tensor with ``in_channels`` C."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 4-D (N, C, H, W) tensor, got {shape}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}), the loss network "
            f"takes in_channels={in_channels}"
        )


def check_inputs(
    net: nn.Module,
    pred: torch.Tensor,
    target: torch.Tensor,
    target_index: torch.Tensor | None,
    boxes: torch.Tensor | None,
    check_values: bool = True,
) -> torch.Tensor | None:
    """Raises ValueError naming the argument and its value; returns ``boxes`` as float64 on the
    host (None without boxes).

    Shapes, dtypes and devices are host metadata. The value checks (finite pred, target and
    boxes; ``target_index`` in range) and the boxes travel to the host together in one copy:
    one synchronisation per call on a GPU instead of one per check. ``check_values=False``
    skips the value checks of pred, target and target_index: without boxes, no copy at all.
    """
    for name, x in (("pred", pred), ("target", target)):
        check_map(name, x, net.in_channels)
        device = getattr(net, "device", x.device)
        if x.device != device:
            raise ValueError(
                f"{name} is on {x.device} but the loss network is on {device}; move the "
                "network with .to() (the parent model's .to() does it)"
            )
    n = len(pred)
    if target_index is None:
        if target.shape != pred.shape:
            raise ValueError(
                f"pred and target must have the same shape, got pred {tuple(pred.shape)} "
                f"and target {tuple(target.shape)}"
            )
    else:
        if target.shape[1:] != pred.shape[1:]:
            raise ValueError(
                f"target maps must have pred's (C, H, W) {tuple(pred.shape[1:])}, got target "
                f"{tuple(target.shape)}"
            )
        if (
            not isinstance(target_index, torch.Tensor)
            or target_index.dim() != 1
            or target_index.dtype.is_floating_point
            or target_index.dtype in (torch.bool, torch.complex64, torch.complex128)
            or len(target_index) != n
        ):
            raise ValueError(
                f"target_index must be an integer tensor of shape ({n},), got "
                f"{_describe(target_index)}"
            )
    if boxes is not None and (
        not isinstance(boxes, torch.Tensor)
        or tuple(boxes.shape) != (n, 4)
        or not boxes.dtype.is_floating_point
    ):
        raise ValueError(
            f"boxes must be a float tensor of shape ({n}, 4) (XYXY pixels of the maps), got "
            f"{_describe(boxes)}"
        )

    if not check_values and boxes is None:
        return None
    flags = []
    if check_values:
        flags += [torch.isfinite(pred).all(), torch.isfinite(target).all()]
        if target_index is not None and n:
            index = target_index.to(pred.device)
            flags += [(index >= 0).all(), (index < len(target)).all()]
    if boxes is not None:
        flags.append(torch.isfinite(boxes).all().to(pred.device))
    payload = torch.stack(flags).double()
    if boxes is not None:
        payload = torch.cat([payload, boxes.detach().to(pred.device, torch.float64).flatten()])
    host = payload.tolist()
    ok = [bool(v) for v in host[: len(flags)]]
    if check_values and not ok[0]:
        raise ValueError("pred holds non-finite values (NaN or inf)")
    if check_values and not ok[1]:
        raise ValueError("target holds non-finite values (NaN or inf)")
    if check_values and target_index is not None and n and not (ok[2] and ok[3]):
        raise ValueError(
            f"target_index values must lie in [0, {len(target)}) for {len(target)} "
            f"target maps, got min {int(target_index.min())}, max {int(target_index.max())}"
        )
    if boxes is None:
        return None
    if not ok[-1]:
        raise ValueError("boxes hold non-finite values (NaN or inf)")
    return torch.tensor(host[len(flags) :], dtype=torch.float64).reshape(n, 4)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__

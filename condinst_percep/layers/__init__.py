from .shape_spec import ShapeSpec

__all__ = ["ShapeSpec"]

"""Training engine: launcher, command line, optimizer and schedule, training loop, hooks."""
from .defaults import collect_env_info, default_argument_parser, default_setup, seed_all_rng
from .hooks import EvalHook, IterationTimer, LRScheduler, PeriodicCheckpointer, PeriodicWriter
from .launch import launch
from .solver import (
    build_gradient_clipper,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
)
from .train_loop import HookBase, SimpleTrainer, TrainerBase
from .trainer import Trainer, auto_scale_workers, create_ddp_model, default_writers
from .validate import validate_cfg

__all__ = [
    "EvalHook",
    "HookBase",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "SimpleTrainer",
    "Trainer",
    "TrainerBase",
    "auto_scale_workers",
    "build_gradient_clipper",
    "build_lr_scheduler",
    "build_optimizer",
    "collect_env_info",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "get_default_optimizer_params",
    "launch",
    "seed_all_rng",
    "validate_cfg",
]

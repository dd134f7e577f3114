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

__all__ = [
    "EvalHook",
    "HookBase",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "SimpleTrainer",
    "TrainerBase",
    "build_gradient_clipper",
    "build_lr_scheduler",
    "build_optimizer",
    "collect_env_info",
    "default_argument_parser",
    "default_setup",
    "get_default_optimizer_params",
    "launch",
    "seed_all_rng",
]

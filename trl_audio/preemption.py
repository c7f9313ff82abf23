"""Pre-emption safety: SIGTERM or SIGINT during training saves a checkpoint at the end of the current step and stops
training cleanly; resuming takes the newest checkpoint that was saved completely."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading

import torch
import torch.distributed as dist
from transformers import TrainerCallback


logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class PreemptionCallback(TrainerCallback):
    """On SIGTERM or SIGINT (a scheduler pre-empting the job, Ctrl-C), finishes the current optimizer step, saves a
    checkpoint and stops training; the process then ends normally (exit code 0). A second signal is not caught: it
    acts as it would without this callback.

    The handlers are installed for the duration of `train()`, from the main thread only (Python allows no other). With
    several processes the flag is shared at every step end (one small all-reduce), so that all ranks stop at the same
    step even when only one of them received the signal.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.received is not None:  # the second signal: behave as if we were not here
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signum
        name = signal.Signals(signum).name
        logger.warning("Received %s: saving a checkpoint at the end of this step, then stopping.", name)

    def on_train_begin(self, args, state, control, **kwargs):
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Training runs outside the main thread: pre-emption signals are not caught.")
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        received = self.received is not None
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([float(received)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            received = bool(flag.item())
            if received and self.received is None:
                self.received = signal.SIGTERM  # another rank was pre-empted
        if received:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


class GivesHandlersBackOnError:
    """Mixed into a trainer (before TRL's class) whose `preemption` attribute is a `PreemptionCallback` or None:
    training that stops on an error (bad data with `on_error="raise"`, a crash) gives the signal handlers back too,
    as `on_train_end` does after a run that ends normally; otherwise they would outlive the run."""

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.preemption is not None:
                self.preemption.on_train_end(self.args, self.state, self.control)


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-<step>` folder of `output_dir` whose `trainer_state.json` (the last file the Trainer
    writes into a checkpoint) is there and parses; None when there is none. A save that was cut short (a crash, a
    second signal) thus leaves the previous checkpoint the one to resume from."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), name) for name in os.listdir(output_dir) if (match := _CHECKPOINT.match(name))
    )
    for _, name in reversed(steps):
        state = os.path.join(output_dir, name, "trainer_state.json")
        try:
            with open(state, encoding="utf-8") as f:
                json.load(f)
        except (OSError, json.JSONDecodeError):
            logger.warning("Skipping %s: it was not saved completely.", os.path.join(output_dir, name))
            continue
        return os.path.join(output_dir, name)
    return None

"""The training loop: accelerate underneath, OOM retry-down in place, atomic checkpoints, exact resume.

    trainer = Trainer(config, policy=OomPolicy(rulebook), reporter=reporter)
    trainer.setup()          # model, data, optimizer, resume, monitor, signal handlers
    result = trainer.train() # the loop below
    trainer.close()

How one optimizer step runs (phases numbered as in `train`):
  1. fetch the step's full batch once (per process: micro-batch x accumulation blocks);
  2. cut it into micro-batches of the *current* micro-batch size and accumulate gradients;
     an OOM anywhere in forward/backward leaves the `except` block with only a flag set, then the
     partial graph is dropped, gradients set to None, memory freed, the config steps down one rung
     and the SAME batch is retried: no step is lost or repeated, the LR schedule and data order
     continue, and micro x accumulation (the effective batch) is unchanged;
  3. clip, optimizer step, scheduler step; an OOM inside the optimizer step that changed nothing (its
     version counters prove it) is retried in place with the same gradients (on GPUs first with
     foreach off); one that had already changed the model stops the run with the last checkpoint
     intact, since no retry could apply the step exactly once;
  4. log, evaluate, checkpoint; act on the monitor's memory flag; scale up when asked and stable.

Exit codes the CLI uses (attributes of the exceptions below): 0 done, 1 a checkpoint could not be
written, 2 bad input, 3 out of memory at the floor of the ladder, 75 sticky device error (the CLI
re-executes itself with --resume, a bounded number of times), 130 stopped by SIGINT/SIGTERM after
saving a checkpoint.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
import torch

from overseer_plan.config import TrainingConfig
from overseer_plan.errors import OverseerError, UserInputError
from trainer import checkpoint as ckpt
from trainer.data import eval_batches, prepare_data, steps_per_epoch, train_loader
from trainer.model import DEFAULT_MODEL
from trainer.monitor import ResourceMonitor
from trainer.oom import OomPolicy, free_memory, step_up
from trainer.optim import make_optimizer
from trainer.runlog import RunLog
from trainer.tokenizer import encoder_for

INJECT_ENV = "OVERSEER_INJECT_OOM"
"""Comma-separated 0-based indices of training micro-batch forwards (counted per process, failed
attempts and retries included; evaluation and checkpointing's recomputation not) that raise a
synthetic torch.OutOfMemoryError from inside the model, as if the allocator had failed there.
`opt:N` raises at the start of the N-th optimizer.step() call (before it changes anything) and
`optpost:N` at its end (after it changed the model), counting every call including retries.
`sticky:N` raises a sticky CUDA error ("illegal memory access") at micro-step N, in the first process
only: a fresh process is what clears such an error, which is how the CLI recovers from it."""
SCALE_UP_AFTER_STEPS = 20
"""Stable optimizer steps (no OOM, no pressure) before --scale-up tries one rung up."""
SCALE_UP_FACTOR = 2.0
"""A rung up roughly doubles activation memory; step up only if peak x this stays under the threshold."""
PROCESS_START = psutil.Process().create_time()


class CheckpointError(OverseerError):
    """A checkpoint could not be written (e.g. the disk is full); older checkpoints are intact."""

    exit_code = 1


class OutOfMemoryAtFloor(OverseerError):
    """OOM with no rung left on the ladder."""

    exit_code = 3


class RestartRequired(OverseerError):
    """A sticky device error: continue from the last checkpoint in a fresh process."""

    exit_code = 75


RESTART_ENV = "OVERSEER_RESTARTS"
"""How many times this run has re-executed itself after a sticky device error."""


class Reporter(Protocol):
    """What the loop tells its user: the CLI renders a progress bar; the default says nothing."""

    def start(self, *, start_step: int, total_steps: int) -> None: ...
    def update(self, step: int, info: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class SilentReporter:
    def start(self, *, start_step: int, total_steps: int) -> None:
        pass

    def update(self, step: int, info: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class TrainResult:
    """What a run did; also written to summary.json."""

    optimizer_steps: int
    effective_batch_size: int
    final_loss: float | None
    final_eval_loss: float | None
    final_eval_step: int | None  # the step final_eval_loss was measured at (0: before training)
    initial_eval_loss: float | None
    oom_events: int
    step_downs: int
    step_ups: int
    time_to_first_step_s: float | None
    samples_per_s: float | None
    steady_samples_per_s: float | None
    tokens_per_s: float | None
    wall_s: float
    interrupted: bool
    resumed_from_step: int | None
    device: str
    precision: str
    model: str
    from_scratch: bool
    run_dir: str
    config: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    """Training loss of every optimizer step run by this process (for tests and benchmarks)."""


class _Injector:
    """Raises a synthetic OOM from a forward pre-hook at chosen micro-step indices, and from optimizer
    step hooks at chosen step calls (see INJECT_ENV)."""

    def __init__(self, spec: str | None):
        """Raises UserInputError for an entry that is not N, opt:N, optpost:N or sticky:N."""
        found: dict[str, set[int]] = {"": set(), "sticky": set(), "opt": set(), "optpost": set()}
        for item in (x for x in (spec or "").replace(" ", "").split(",") if x):
            kind, _, index = item.rpartition(":")
            if kind not in found or not index.isdigit():
                raise UserInputError(f"{INJECT_ENV}={spec!r}: {item!r} is not N, opt:N, optpost:N or sticky:N "
                                     "(N a micro-step or step index); fix or unset it")
            found[kind].add(int(index))
        self.at = found[""]
        first_process = os.environ.get(RESTART_ENV, "0") == "0"
        self.sticky = found["sticky"] if first_process else set()
        self.sticky_armed = False
        self.opt_pre, self.opt_post = found["opt"], found["optpost"]
        self.armed = False
        self.step_calls = 0

    def arm(self, index: int) -> None:
        self.armed = index in self.at
        self.sticky_armed = index in self.sticky

    def hook(self, _module: Any, _args: Any) -> None:
        if self.sticky_armed:
            self.sticky_armed = False
            raise RuntimeError("CUDA error: an illegal memory access was encountered (synthetic: "
                               f"{INJECT_ENV} sticky)")
        if self.armed:
            self.armed = False  # recomputation in backward (checkpointing) must not fire again
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (synthetic: "
                                         f"{INJECT_ENV})")

    def before_step(self, _optimizer: Any, _args: Any, _kwargs: Any) -> None:
        self.step_calls += 1
        if self.step_calls - 1 in self.opt_pre:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 1.00 GiB (synthetic: {INJECT_ENV} opt)")

    def after_step(self, _optimizer: Any, _args: Any, _kwargs: Any) -> None:
        if self.step_calls - 1 in self.opt_post:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 1.00 GiB (synthetic: {INJECT_ENV} optpost)")


class Trainer:
    """One training run. Compose: the OOM policy, monitor and reporter are passed in."""

    def __init__(self, config: TrainingConfig, *, policy: OomPolicy | None = None,
                 monitor: ResourceMonitor | None = None, use_monitor: bool = True,
                 reporter: Reporter | None = None, resume: bool = False, cache_dir: Path | None = None,
                 sources: list | None = None):
        self.config = config
        self.policy = policy or OomPolicy.default()
        self.monitor, self.use_monitor = monitor, use_monitor
        self.reporter = reporter or SilentReporter()
        self.resume, self.cache_dir, self.sources = resume, cache_dir, sources
        self.run_dir = Path(config.output_dir)
        self.step = 0
        self.micro_attempts = 0
        self.history: list[TrainingConfig] = []  # configs before each step down (for --scale-up)
        self.oom_rungs: set[tuple] = set()  # rungs that hit an OOM: never scale back up onto them
        self._stop_signal: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._hook = None
        self._monitor_failure_said = False
        self._saved_step: int | None = None  # the step of the last checkpoint this process wrote
        self.losses: list[float] = []

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate import Accelerator

        from trainer.model import load_model

        # Bad environment variables and a bad --output fail here, before anything in the run directory changes.
        ckpt.pause_s()
        self.injector = _Injector(os.environ.get(INJECT_ENV))
        self._open_run_dir()
        for name in ckpt.remove_partial(self.run_dir):
            self.log.event("partial_checkpoint_removed", name=name)
        self.log.event("process_start", pid=os.getpid(), argv=os.sys.argv[:12])
        cfg = self.config
        # accelerate places the model and runs autocast/loss scaling; `cpu=True` honours --cpu-only.
        precision = self._precision(cfg)
        self.accelerator = Accelerator(cpu=not cfg.use_gpu, mixed_precision=precision)
        self.device = self.accelerator.device
        if cfg.mixed_precision and precision == "no":
            self._say(f"mixed precision ({cfg.mixed_precision_dtype}, from the {cfg.mode} preset) runs as fp32 on the "
                      "CPU: 16-bit autocast there is slower and saves little memory (`overseer doctor oom` shows the "
                      "estimated effect); set mixed_precision explicitly to use it anyway")
        loaded = load_model(cfg.model, attention=cfg.attention, seed=cfg.seed)
        self.loaded, self.model, self.tokenizer = loaded, loaded.model, loaded.tokenizer
        for note in loaded.notes:
            self._say(note)
        cfg = self._cap_sequence(cfg, loaded.max_positions)
        state = self._find_resume_state()
        if state is not None:  # the checkpoint's rung wins: the same micro-batch split gives the same losses
            cfg = cfg.with_changes(**_rung_fields(state["config"]))
        self.config = cfg
        self._setup_data(cfg, state)
        if state is not None and self.step > self.total_steps:
            raise UserInputError(f"{self.resume_path.name} is already at step {self.step}; pass --max-steps above "
                                 f"{self.step} to train further")
        self._setup_optimizer(cfg)
        if state is not None:
            self._restore(state)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self._apply_model_settings(cfg, previous=None)
        self._install_injector()
        self._start_monitor(cfg)
        self._install_signal_handlers()

    def _open_run_dir(self) -> None:
        """Create the run directory and its logs; refuse one that holds another run's checkpoints.

        Training into it without --resume would overwrite some of those checkpoints and keep the
        others, so a later --resume would continue a mix of two runs.
        """
        found = ckpt.list_checkpoints(self.run_dir)
        if found and not self.resume:
            raise UserInputError(f"--output {self.run_dir} already holds checkpoints of a run ({found[-1][1].name}); "
                                 "pass --resume to continue it, or choose a new --output")
        self.log = RunLog(self.run_dir)  # a file, a device or an uncreatable path: a one-line UserInputError

    def _precision(self, cfg: TrainingConfig) -> str:
        # Autocast on CPU is only worth it with native bf16 (AVX512-BF16/AMX); fp16 autocast on CPU is
        # slower than fp32. So on CPU we keep fp32 unless the user explicitly asked for mixed precision.
        if not cfg.mixed_precision:
            return "no"
        on_gpu = cfg.use_gpu and (torch.cuda.is_available() or torch.backends.mps.is_available())
        if not on_gpu:
            return cfg.mixed_precision_dtype if "mixed_precision" in cfg.explicit_fields() else "no"
        if cfg.mixed_precision_dtype == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "fp16"
        return cfg.mixed_precision_dtype

    def _cap_sequence(self, cfg: TrainingConfig, max_positions: int | None) -> TrainingConfig:
        if max_positions and cfg.max_sequence_length > max_positions:
            self._say(f"max_sequence_length {cfg.max_sequence_length} > the model's {max_positions} positions: "
                      f"using {max_positions}")
            return cfg.with_changes(max_sequence_length=max_positions)
        return cfg

    def _find_resume_state(self) -> dict[str, Any] | None:
        if not self.resume:
            return None
        found = ckpt.latest_loadable(self.run_dir)  # raises a one-line UserInputError when all are corrupt
        if found is None:
            self._say(f"--resume: no checkpoint in {self.run_dir}; starting from step 0")
            return None
        path, state, skipped = found
        for why in skipped:
            self._say(f"--resume: skipping a corrupt checkpoint ({why}); falling back to {path.name}")
            self.log.event("checkpoint_skipped", reason=why, fallback=path.name)
        self.resume_path = path
        return state

    def _setup_data(self, cfg: TrainingConfig, state: dict[str, Any] | None) -> None:
        from trainer.corpus import embedded_sources, find_sources

        sources = self.sources or (find_sources(cfg.data) if cfg.data else embedded_sources())
        self.encoder = encoder_for(self.tokenizer)
        # Blocks keep the sequence length the run started with; the sequence rung cuts them in place.
        self.block_len = int(state["block_len"]) if state else cfg.max_sequence_length
        self.data = prepare_data(sources, self.encoder, block_len=self.block_len, seed=cfg.seed,
                                 eval_fraction=cfg.eval_fraction, cache_dir=self.cache_dir)
        world = self.accelerator.num_processes
        per_process_seqs = cfg.batch_size * cfg.gradient_accumulation_steps
        self.blocks_per_step = per_process_seqs * cfg.max_sequence_length // self.block_len
        self.global_blocks = self.blocks_per_step * world
        if cfg.max_steps:
            self.total_steps = cfg.max_steps
        else:
            self.total_steps = math.ceil((cfg.epochs or 1.0) * steps_per_epoch(self.data, self.global_blocks))
        self.step = int(state["step"]) if state else 0
        self.log.step = self.step

    def _setup_optimizer(self, cfg: TrainingConfig) -> None:
        from transformers import get_scheduler

        # No weight decay on biases and norm weights (1-D tensors), as in nanoGPT and HF Trainer.
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = make_optimizer(cfg.optimizer, groups, cfg.learning_rate)
        self.scheduler = get_scheduler("cosine", self.optimizer, num_warmup_steps=int(cfg.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)

    def _restore(self, state: dict[str, Any]) -> None:
        from safetensors.torch import load_model as load_safetensors

        saved_optimizer = state.get("config", {}).get("optimizer", "adamw")
        if saved_optimizer != self.config.optimizer:
            raise UserInputError(
                f"{self.resume_path.name} was trained with optimizer {saved_optimizer}, this run asks for "
                f"{self.config.optimizer}; resume with optimizer: {saved_optimizer}, or start a new run (another --output)")
        saved_model = state.get("config", {}).get("model") or DEFAULT_MODEL
        try:
            missing, unexpected = load_safetensors(self.model, str(self.resume_path / "model.safetensors"), strict=False)
        except RuntimeError:  # torch: "size mismatch for ..."
            missing, unexpected = ["shapes"], []
        ignored = set(getattr(self.model, "_keys_to_ignore_on_save", None) or ())  # never saved, so never loaded
        if unexpected or set(missing) - ignored:
            raise UserInputError(
                f"{self.resume_path.name} was written by another model ({saved_model}; its weights do not fit "
                f"{self.loaded.name}); resume with --model {saved_model}, or start a new run (another --output)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.history = [self.config.with_changes(**_rung_fields(h)) for h in state.get("history", [])]
        self.resumed_from = int(state["step"])
        self.log.event("resume", checkpoint=self.resume_path.name, config=_rung_fields(state["config"]))
        self._say(f"resuming from {self.resume_path.name} (step {self.step} of {self.total_steps})")

    def _install_injector(self) -> None:
        if self.injector.at or self.injector.sticky:
            # Hook a block in the middle so the failure leaves a partial graph behind, like a real OOM.
            target = _middle_block(self.accelerator.unwrap_model(self.model))
            self._hook = target.register_forward_pre_hook(self.injector.hook)
        if self.injector.opt_pre or self.injector.opt_post:
            inner = self._inner_optimizer
            inner.register_step_pre_hook(self.injector.before_step)
            inner.register_step_post_hook(self.injector.after_step)

    def _start_monitor(self, cfg: TrainingConfig) -> None:
        if not self.use_monitor:
            self.monitor = None
            return
        if self.monitor is None:
            self.monitor = ResourceMonitor(interval_s=cfg.memory_check_interval, ram_percent=cfg.max_ram_percent,
                                           gpu_percent=cfg.max_gpu_percent, path=None)
        self.monitor.path = self.monitor.path or self.run_dir / "monitor.jsonl"
        self.monitor.on_event = lambda kind, data: self.log.event(kind, **data)
        self.monitor.start()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop_signal is not None:  # the second Ctrl-C: leave now, without a checkpoint
            os._exit(128 + signum)
        self._stop_signal = signum
        self.reporter.message(f"{signal.Signals(signum).name}: saving a checkpoint at the end of this step, "
                              "then stopping (press Ctrl-C again to quit at once)")

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        cfg = self.config
        self.t_start = time.time()
        self.first_step_end: float | None = None
        self.compute_s, self.samples, self.steady_samples, self.steady_s = 0.0, 0, 0, 0.0
        self.initial_eval = None
        if self.step == 0:  # the starting point of the learning curve (summary: eval_loss_drop)
            t_eval = time.time()
            self.initial_eval = self._evaluate()
            self.log.event("eval", eval_loss=self.initial_eval, perplexity=_ppl(self.initial_eval),
                           seconds=round(time.time() - t_eval, 3))
        self.last_eval = self.initial_eval
        self.last_eval_step = 0 if self.initial_eval is not None else None
        if self.step >= self.total_steps:  # resumed at the end: the run that got here keeps its summary
            self._say(f"{self.resume_path.name} is already at step {self.step} of {self.total_steps}: nothing to "
                      f"train (pass --max-steps above {self.step} to train further)")
            return self._result(interrupted=False)
        self.stable_steps, window = 0, {"loss": 0.0, "n": 0, "tokens": 0, "t": time.time()}
        self.reporter.start(start_step=self.step, total_steps=self.total_steps)
        batches = iter(train_loader(self.data, global_batch=self.global_blocks, seed=cfg.seed, start_step=self.step,
                                    total_steps=self.total_steps, num_workers=cfg.num_workers,
                                    pin_memory=cfg.pin_memory and self.device.type == "cuda",
                                    rank=self.accelerator.process_index, world=self.accelerator.num_processes))
        while self.step < self.total_steps:
            # 1. this step's full batch, fetched once: retries re-split the same samples
            batch = next(batches)
            t0 = time.time()
            # 2. forward/backward over micro-batches; on OOM step down and retry the same batch
            while True:
                failure, loss = self._accumulate(batch)
                if failure is None:
                    break
                self._recover(*failure)  # outside the except block: the failed frames are gone
            # 3. clip, update (retried in place when an OOM hit before it changed anything), advance the schedule
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            tries = 0
            while (failure := self._optimizer_step()) is not None:
                tries += 1
                self._recover_optimizer_step(*failure, tries=tries)
            if not self.accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the schedule aligned
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.log.step = self.step
            # 4. bookkeeping
            self._account(t0, batch, loss, window)
            self._after_step(window)
            if self._stop_signal is not None:
                self._checkpoint(reason=signal.Signals(self._stop_signal).name)
                self.log.event("interrupted", signal=signal.Signals(self._stop_signal).name)
                return self._finish(interrupted=True)
        if self.step % self.config.eval_steps:
            self.last_eval, self.last_eval_step = self._evaluate(), self.step
        # Not "the newest checkpoint has this step": after a resume that skipped a corrupt checkpoint-N,
        # that corrupt one has this step and must be replaced.
        if self._saved_step != self.step:
            self._checkpoint(reason="end")
        return self._finish(interrupted=False)

    def _accumulate(self, batch: torch.Tensor) -> tuple[tuple[str, str] | None, float]:
        """Forward/backward over the micro-batches of one step. Returns ((verdict, message) | None, loss).

        The loss of each micro-batch is weighted by its share of the step's sequences, so the
        accumulated gradient is the mean over the whole step whatever the split.
        """
        cfg = self.config
        seqs = batch.reshape(-1, cfg.max_sequence_length)  # the sequence rung cuts blocks in place
        micro, n = cfg.batch_size, seqs.shape[0]
        chunks = seqs.split(micro)
        total = 0.0
        try:
            for i, chunk in enumerate(chunks):
                self.injector.arm(self.micro_attempts)
                self.micro_attempts += 1
                chunk = chunk.to(self.device, non_blocking=True)
                # Sync gradients across processes only on the last micro-batch (as nanoGPT toggles it).
                sync = self.accelerator.no_sync(self.model) if i < len(chunks) - 1 else _nullcontext()
                with sync:
                    loss = self.model(input_ids=chunk, labels=chunk).loss * (chunk.shape[0] / n)
                    self.accelerator.backward(loss)
                total += float(loss.detach())
            return None, total
        except Exception as e:  # classify and leave: memory is freed in _recover, outside this block
            verdict = self.policy.classify(e)
            if verdict is None:
                raise
            return (verdict, _one_line(e)), 0.0

    def _recover(self, verdict: str, message: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # drop the partial step's gradients
        freed = free_memory(self.device.type)
        self.stable_steps = 0
        self.log.event("oom", verdict=verdict, message=message, micro_step=self.micro_attempts - 1,
                       micro_batch_size=self.config.batch_size, **freed)
        self.reporter.message(f"step {self.step + 1}: {verdict}: {message}")
        if verdict == "restart":
            self._save_summary(interrupted=False, extra={"stopped": "restart"})
            raise RestartRequired(f"sticky device error at step {self.step + 1} ({message}); continuing from the "
                                  "last checkpoint in a fresh process")
        if verdict == "probable" and self.policy.retry_probable(self.step):
            self.log.event("retry_same_config", reason="probable OOM: retried once before stepping down")
            return
        self.oom_rungs.add(_rung_key(self.config))
        self._step_down(reason=f"OOM: {message}")

    @property
    def _inner_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer itself (accelerate wraps it)."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def _optimizer_state_versions(self) -> tuple[list[int], dict[int, list[int]]]:
        """In-place version counters of every parameter and existing optimizer-state tensor."""
        inner = self._inner_optimizer
        params = [p for g in inner.param_groups for p in g["params"]]
        states = {id(p): [t._version for t in inner.state[p].values() if isinstance(t, torch.Tensor)]
                  for p in params if p in inner.state}
        return [p._version for p in params], states

    def _optimizer_step(self) -> tuple[str, str, bool] | None:
        """optimizer.step(); on an OOM, (verdict, message, whether it had already changed the model or its state).

        Every torch optimizer updates tensors in place, so unchanged version counters prove that
        nothing was applied and the same step can run again with the same gradients.
        """
        before = self._optimizer_state_versions()
        try:
            self.optimizer.step()
            return None
        except Exception as e:
            verdict = self.policy.classify(e)
            if verdict is None:
                raise
            message = _one_line(e)
        versions, states = self._optimizer_state_versions()
        changed = versions != before[0] or any(states.get(k) != v for k, v in before[1].items())
        if not changed:  # states created by the failed call are fresh zeros: drop them, the retry recreates them
            inner = self._inner_optimizer
            for p in [p for g in inner.param_groups for p in g["params"]]:
                if id(p) not in before[1] and p in inner.state:
                    del inner.state[p]
        return verdict, message, changed

    def _recover_optimizer_step(self, verdict: str, message: str, changed: bool, *, tries: int) -> None:
        """After an OOM inside optimizer.step(): retry the same step, or stop with the last checkpoint intact.

        The ladder's rungs shrink activations, which are already freed when the optimizer runs; what
        can shrink the step itself is running it one tensor at a time (foreach off: one parameter-sized
        temporary instead of one per parameter) and giving cached memory back.
        """
        freed = free_memory(self.device.type)
        self.stable_steps = 0
        self.log.event("oom", verdict=verdict, message=message, phase="optimizer_step", changed_model=changed,
                       micro_batch_size=self.config.batch_size, **freed)
        self.reporter.message(f"step {self.step + 1}: {verdict} in the optimizer step: {message}")
        last = ckpt.list_checkpoints(self.run_dir)
        kept = f"the last checkpoint ({last[-1][1].name}) is intact" if last else "no checkpoint was written yet"
        if verdict == "restart":
            self._save_summary(interrupted=False, extra={"stopped": "restart"})
            raise RestartRequired(f"sticky device error in the optimizer step at step {self.step + 1} ({message})")
        if changed:
            self._save_summary(interrupted=False, extra={"stopped": "oom_optimizer_step"})
            raise OutOfMemoryAtFloor(
                f"out of memory inside the optimizer step at step {self.step + 1}, after it had updated part of the "
                f"model, so the step cannot be retried exactly; nothing was saved since, and {kept} (continue with "
                "--resume once memory is free); if it recurs, use optimizer: adafactor (smaller state) or a smaller model")
        inner = self._inner_optimizer
        if any(g.get("foreach") is not False for g in inner.param_groups) and self.device.type != "cpu":
            for g in inner.param_groups:
                g["foreach"] = False
            self.log.event("step_down", rule="optimizer.foreach-off", reason=f"OOM in the optimizer step: {message}",
                           changes={"foreach": [True, False]},
                           effective_batch_size=self.config.effective_batch_size(self.accelerator.num_processes))
            self.reporter.message("step down: optimizer runs one tensor at a time (foreach off)")
            return
        if tries <= 1:
            self.log.event("retry_same_config", reason="OOM in the optimizer step before it changed anything: "
                           "retried once after freeing memory")
            return
        self._save_summary(interrupted=False, extra={"stopped": "oom_optimizer_step"})
        raise OutOfMemoryAtFloor(
            f"out of memory inside the optimizer step at step {self.step + 1} (parameters, gradients and optimizer "
            f"state do not fit, and the step changed nothing); {kept}; use optimizer: adafactor (smaller state), "
            "a smaller model, or run `overseer doctor oom`")

    def _running_precision(self) -> str:
        """What the steps run in: accelerate's mixed precision, 'no' as fp32."""
        mp = self.accelerator.mixed_precision
        return "fp32" if mp == "no" else str(mp)

    def _step_down(self, *, reason: str) -> bool:
        steps = self.policy.step_down(self.config)
        if not steps:
            if reason.startswith("OOM"):
                self.log.event("floor", config=_rung_fields(self.config.model_dump()))
                self._save_summary(interrupted=False, extra={"stopped": "oom_floor"})
                raise OutOfMemoryAtFloor(self.policy.floor_message(self.config, self._running_precision()))
            self.log.event("floor", reason=reason)
            return False
        for new, rule in steps:
            old = self.config
            self.history.append(old)
            self.config = new
            self._apply_model_settings(new, previous=old)
            changes = {k: [getattr(old, k), getattr(new, k)] for k in _RUNG_FIELDS if getattr(old, k) != getattr(new, k)}
            self.log.event("step_down", rule=rule.id, reason=reason, changes=changes,
                           effective_batch_size=new.effective_batch_size(self.accelerator.num_processes))
            self.reporter.message(f"step down ({rule.id}): " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()))
        if self.config.max_sequence_length < old.max_sequence_length or not steps[-1][1].semantics_preserving:
            self.reporter.message("warning: sequences are now shorter: the model sees less context from here on")
        return True

    def _apply_model_settings(self, cfg: TrainingConfig, previous: TrainingConfig | None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if previous is None or cfg.gradient_checkpointing != previous.gradient_checkpointing:
            if cfg.gradient_checkpointing:
                _checkpointing(model, on=True)
            elif previous is not None:
                _checkpointing(model, on=False)
        if previous is not None and previous.mixed_precision and not cfg.mixed_precision:
            _autocast_off(self.accelerator, self.model, self.optimizer)

    def _after_step(self, window: dict[str, Any]) -> None:
        cfg = self.config
        if self.step % cfg.logging_steps == 0 or self.step == self.total_steps:
            self._log_metrics(window)
        if self.step % cfg.eval_steps == 0:
            t_eval = time.time()
            self.last_eval, self.last_eval_step = self._evaluate(), self.step
            self.log.event("eval", eval_loss=self.last_eval, perplexity=_ppl(self.last_eval),
                           seconds=round(time.time() - t_eval, 3))
        if self.step % cfg.save_steps == 0 and self.step < self.total_steps:
            self._checkpoint(reason="save_steps")
        self._react_to_monitor()
        self.stable_steps += 1
        if cfg.scale_up and self.stable_steps >= SCALE_UP_AFTER_STEPS:
            self._maybe_scale_up()

    def _react_to_monitor(self) -> None:
        if self.monitor and self.monitor.failure and not self._monitor_failure_said:
            self._monitor_failure_said = True
            self._say(f"the resource monitor stopped ({self.monitor.failure}); training goes on without "
                      "memory-pressure checks")
        pressure = self.monitor.poll() if self.monitor else None
        if pressure is None:
            return
        level, why = pressure
        self.stable_steps = 0
        if level == "critical":  # save progress first: the OOM killer may be seconds away
            self._checkpoint(reason="emergency")
            self.log.event("emergency_checkpoint", **why)
        self.oom_rungs.add(_rung_key(self.config))
        self._step_down(reason=f"memory pressure: {why.get('resource')} at {why.get('percent')}% "
                               f"(threshold {why.get('threshold_percent')}%)")

    def _maybe_scale_up(self) -> None:
        self.stable_steps = 0
        new = step_up(self.config, self.history)
        if new is None or _rung_key(new) in self.oom_rungs:
            return
        if self.monitor is not None and not self.monitor.headroom_ok(SCALE_UP_FACTOR):
            return
        if self.policy.fits is not None and not self.policy.fits(new):
            return
        old, self.config = self.config, new
        if self.history and self.history[-1] is new:
            self.history.pop()
        self._apply_model_settings(new, previous=old)
        changes = {k: [getattr(old, k), getattr(new, k)] for k in _RUNG_FIELDS if getattr(old, k) != getattr(new, k)}
        self.log.event("step_up", changes=changes, peak=dict(self.monitor.peak) if self.monitor else {})
        self.reporter.message("step up: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()))
        if self.monitor:
            self.monitor.reset_peak()

    # ------------------------------------------------------------------ measurement
    def _account(self, t0: float, batch: torch.Tensor, loss: float, window: dict[str, Any]) -> None:
        dt = time.time() - t0
        n = batch.shape[0] * self.accelerator.num_processes
        self.compute_s += dt
        self.samples += n
        if self.first_step_end is None:
            self.first_step_end = time.time()
            self.log.event("first_step", seconds_since_process_start=round(self.first_step_end - PROCESS_START, 3),
                           step_s=round(dt, 3))
        else:
            self.steady_samples += n
            self.steady_s += dt
        self.losses.append(loss)
        window["loss"] += loss
        window["n"] += 1
        window["tokens"] += batch.numel() * self.accelerator.num_processes
        self.reporter.update(self.step, {"loss": loss, "tokens_per_s": batch.numel() / max(dt, 1e-9),
                                         "rss_gib": psutil.Process().memory_info().rss / 2**30,
                                         "micro": self.config.batch_size})

    def _log_metrics(self, window: dict[str, Any]) -> None:
        now = time.time()
        row = {"step": self.step, "loss": window["loss"] / max(window["n"], 1), "lr": self.scheduler.get_last_lr()[0],
               "tokens_per_s": round(window["tokens"] / max(now - window["t"], 1e-9), 1),
               "micro_batch_size": self.config.batch_size,
               "gradient_accumulation_steps": self.config.gradient_accumulation_steps,
               "max_sequence_length": self.config.max_sequence_length,
               "rss_bytes": psutil.Process().memory_info().rss, "elapsed_s": round(now - self.t_start, 3)}
        if self.device.type == "cuda":
            row.update(cuda_allocated_bytes=torch.cuda.memory_allocated(), cuda_reserved_bytes=torch.cuda.memory_reserved(),
                       cuda_peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                       cuda_peak_reserved_bytes=torch.cuda.max_memory_reserved())
        self.log.metric(row)
        window.update(loss=0.0, n=0, tokens=0, t=now)

    @torch.no_grad()
    def _evaluate(self) -> float:
        """Mean token loss over the held-out blocks (at most eval_max_batches batches).

        An OOM here halves the evaluation batch only; training's rung is left alone.
        """
        cfg = self.config
        self.model.eval()
        size = max(1, cfg.batch_size * cfg.max_sequence_length // self.block_len)
        while True:
            failed = False
            try:
                total, count = 0.0, 0
                for blocks in eval_batches(self.data, batch_size=size, max_batches=cfg.eval_max_batches):
                    seqs = blocks.reshape(-1, cfg.max_sequence_length).to(self.device)
                    total += float(self.model(input_ids=seqs, labels=seqs).loss) * seqs.shape[0]
                    count += seqs.shape[0]
            except Exception as e:
                if self.policy.classify(e) != "oom" or size == 1:
                    raise
                failed = True
            if not failed:
                break
            free_memory(self.device.type)
            size //= 2
            self.log.event("eval_oom", eval_batch_size=size)
        self.model.train()
        return total / count

    # ------------------------------------------------------------------ checkpoints and the end
    def _checkpoint(self, *, reason: str) -> None:
        previous = ckpt.list_checkpoints(self.run_dir)
        state = {"step": self.step, "block_len": self.block_len, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": ckpt.rng_state(),
                 "samples_seen": self.step * self.global_blocks,
                 "config": self.config.model_dump(mode="json"),
                 "history": [h.model_dump(mode="json") for h in self.history]}
        if self.accelerator.scaler is not None:
            state["scaler"] = self.accelerator.scaler.state_dict()
        try:
            path = ckpt.save_checkpoint(self.run_dir, self.step, model=self.accelerator.unwrap_model(self.model),
                                        tokenizer=self.tokenizer, state=state, config_yaml=self.config.to_yaml(),
                                        keep=self.config.save_total_limit)
        except OSError as e:
            kept = previous[-1][1].name if previous else "none"
            self.log.event("checkpoint_failed", error=f"{e.strerror or e}", errno=e.errno, kept=kept)
            raise CheckpointError(f"could not write checkpoint-{self.step} in {self.run_dir}: {e.strerror or e}; "
                                  f"previous checkpoint kept: {kept}") from None
        self._saved_step = self.step
        self.log.event("checkpoint", path=path.name, reason=reason)

    def _finish(self, *, interrupted: bool) -> TrainResult:
        result = self._result(interrupted)
        self._save_summary(interrupted, result=result)
        return result

    def _result(self, interrupted: bool) -> TrainResult:
        cfg = self.config
        steady = self.steady_samples / self.steady_s if self.steady_s > 0 else None
        return TrainResult(
            optimizer_steps=self.step, effective_batch_size=cfg.effective_batch_size(self.accelerator.num_processes),
            final_loss=self.losses[-1] if self.losses else None, final_eval_loss=self.last_eval,
            final_eval_step=self.last_eval_step, initial_eval_loss=self.initial_eval, oom_events=self.log.counts.get("oom", 0),
            step_downs=self.log.counts.get("step_down", 0), step_ups=self.log.counts.get("step_up", 0),
            time_to_first_step_s=round(self.first_step_end - PROCESS_START, 3) if self.first_step_end else None,
            samples_per_s=round(self.samples / self.compute_s, 3) if self.compute_s else None,
            steady_samples_per_s=round(steady, 3) if steady else None,
            tokens_per_s=round(self.samples * self.block_len / self.compute_s, 1) if self.compute_s else None,
            wall_s=round(time.time() - self.t_start, 3), interrupted=interrupted,
            resumed_from_step=getattr(self, "resumed_from", None), device=self.device.type,
            precision=self._running_precision(), model=self.loaded.name, from_scratch=self.loaded.from_scratch,
            run_dir=str(self.run_dir), config=cfg.model_dump(mode="json"), losses=list(self.losses))

    def _save_summary(self, interrupted: bool, *, result: TrainResult | None = None,
                      extra: dict[str, Any] | None = None) -> None:
        data = asdict(result or self._result(interrupted))
        data.pop("losses")
        drop = None
        if data["initial_eval_loss"] and data["final_eval_loss"] is not None and data["final_eval_step"]:
            drop = round(1 - data["final_eval_loss"] / data["initial_eval_loss"], 4)
        data.update(eval_loss_drop=drop, final_perplexity=_ppl(data["final_eval_loss"]), events=dict(self.log.counts),
                    monitor={"samples": self.monitor.samples, "peak": self.monitor.peak} if self.monitor else None,
                    **(extra or {}))
        self.log.write_summary(data)

    def close(self) -> None:
        """Stop the monitor, restore signal handlers, close the logs. Safe to call twice."""
        from accelerate.state import AcceleratorState, GradientState, PartialState

        if self.monitor is not None:
            self.monitor.stop()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if hasattr(self, "log"):
            self.log.close()
        # accelerate keeps process-wide singletons; reset them so the next run may choose other settings.
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()

    def _say(self, text: str) -> None:
        self.reporter.message(text)
        if hasattr(self, "log"):
            self.log.event("note", text=text)


# ---------------------------------------------------------------------- helpers
_RUNG_FIELDS = ("batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "mixed_precision",
                "max_sequence_length")


def _one_line(e: BaseException) -> str:
    """An exception as one log line: its type and the first line of its message."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


def _rung_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in _RUNG_FIELDS if k in config}


def _rung_key(config: TrainingConfig) -> tuple:
    return tuple(getattr(config, k) for k in _RUNG_FIELDS)


def _ppl(loss: float | None) -> float | None:
    return round(math.exp(min(loss, 50.0)), 4) if loss is not None else None


def _middle_block(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            return module[len(module) // 2]
    return model


def _checkpointing(model: Any, *, on: bool) -> None:
    # transformers 5.x renamed gradient_checkpointing_enable to activation_checkpointing_enable (the old
    # name warns until v6); non-reentrant checkpointing works with inputs that need no grad.
    if on and hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def _autocast_off(accelerator: Any, model: Any, optimizer: Any) -> None:
    # accelerate fixes mixed precision when it prepares the model: undo its autocast wrapper and loss scaler.
    original = getattr(model, "_original_forward", None)
    if original is not None:
        model.forward = original
    accelerator.native_amp = False
    accelerator.scaler = None
    if hasattr(optimizer, "scaler"):
        optimizer.scaler = None


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None

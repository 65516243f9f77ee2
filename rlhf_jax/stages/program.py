"""The program of a supervised training stage: the one jitted step it runs, with its shardings.

pretrain, sft, sft_init and their reward-model twins (pretrain_rm, sft_rm) run `sft_step`; rm
runs `rm_step`. The stage runners (stages/lm.py, stages/rm.py), the ahead-of-time fit check
(aot.py) and the benchmark (experiments/bench/model_bench.py) all take the step from
`program`, so what is checked and benchmarked is what runs. PPO's equivalent is
`stages.ppo.phases`.
"""
import dataclasses
import functools
from typing import Any, Callable

import ml_collections
import optax

from rlhf_jax import config_lib, loop, optim, rm, sft, sharding, state
from rlhf_jax.models import ModelConfig

# The stages whose runner is one supervised training step through the host loop.
STAGES = ('pretrain', 'pretrain_rm', 'sft', 'sft_rm', 'sft_init', 'rm')


@dataclasses.dataclass(frozen=True)
class Program:
  """A supervised stage's training step and what it needs to run or to be lowered.

  Attributes:
    name: 'sft_step' or 'rm_step'.
    step: the jitted `(state, batch, rng) -> (state, metrics)` (loop.jit_step: the state is
      donated); a batch is a TokenBatch ([B, T] fields) or, for rm_step, a RankingBatch
      ([B, K, T] tokens and mask, [B, K] ranks and valid).
    model: the stage's geometry (forward passes such as validation use it as it is).
    head: 'lm' or 'scalar'.
    tx: the optimizer that builds and updates the state's opt_state.
    abstract_state: the TrainState as ShapeDtypeStructs carrying their shardings.
    state_shardings: the TrainState's shardings.
    batch_shardings: rows over the mesh's batch axes, every field.
    batch_kind: the pipeline kind whose batch_spec gives the batch's shapes.
  """
  name: str
  step: Callable[..., Any]
  model: ModelConfig
  head: str
  tx: optax.GradientTransformation
  abstract_state: Any
  state_shardings: Any
  batch_shardings: Any
  batch_kind: str


def program(config: ml_collections.ConfigDict, mesh, total_steps: int) -> Program:
  """The training step of `config.stage` on `mesh`, for a run of `total_steps` optimizer steps
  (they set the learning-rate schedule, which the step reads)."""
  if config.stage not in STAGES:
    raise config_lib.ConfigError(f'stage {config.stage!r} has no supervised training step')
  name, step_fn, head, kind = (('rm_step', rm.rm_step, 'scalar', 'rankings')
                               if config.stage == 'rm' else
                               ('sft_step', sft.sft_step, 'lm', 'demonstrations'))
  model = config_lib.to_model_config(config.model)
  tx = optim.make_optimizer(config.optimizer, total_steps)
  abstract_state, state_shardings = state.abstract_train_state(model, head, tx, mesh)
  rows = sharding.batch_sharding(mesh)
  # The step differentiates the training geometry (unrolled layers on the CPU presets); the
  # state's parameters are the same either way.
  step = loop.jit_step(
      functools.partial(step_fn, model=state.make_model(config_lib.training_model(model, config),
                                                        head),
                        tx=tx, lr_schedule=optim.schedule(config.optimizer, total_steps)),
      state_shardings=state_shardings, batch_shardings=rows)
  return Program(name=name, step=step, model=model, head=head, tx=tx,
                 abstract_state=abstract_state, state_shardings=state_shardings,
                 batch_shardings=rows, batch_kind=kind)

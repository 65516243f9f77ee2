"""One PPO iteration on the fixed workload of issue 8, split into its phases.

  python experiments/bench/ppo_iteration.py --geometry tiny|small [--iters 5] [--data 1]

`--data N` splits every phase's rows over N devices (the mesh's data axis); on a CPU host, give
it N devices first: XLA_FLAGS=--xla_force_host_platform_device_count=N.

Workload: 64 prompts of exactly 32 tokens; 32 sampled tokens each (temperature 1, no early
stop); policy and reference log-probs, RM score and values over the 64 sequences; GAE; one epoch
of 4 minibatches of 16 (4 policy and 4 value optimizer updates); fixed KL coefficient 0.02; fp32;
policy, reference, RM and value of the same geometry, random weights. It runs the three jitted
phases the ppo stage runs (`stages.ppo.phases`: generate, score, train) on one CPU device, or on
`--data` of them.

Prints the median seconds per iteration after warm-up, episodes per second, the phase split,
and model FLOP/s against the float32 matmul peak measured in the same run (timing.py).
"""
import argparse
import functools
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import timing  # noqa: E402

from rlhf_jax import config_lib, ppo, sharding, state  # noqa: E402
from rlhf_jax.stages import common  # noqa: E402
from rlhf_jax.stages import ppo as ppo_stage  # noqa: E402

EPISODES, MINIBATCH, PROMPT_LEN, RESPONSE_LEN = 64, 16, 32, 32


def workload_config(geometry: str, data: int = 1):
  """configs/ppo.py for `geometry`, set to the issue's workload, its rows over `data` devices."""
  c = config_lib.load_config(f'{config_lib.CONFIG_DIR}/ppo.py:{geometry}')
  c.reward_model = config_lib.model_config_dict(geometry)
  c.mesh.update(dict(data=data, fsdp=1, tensor=1))
  c.batch_size, c.minibatch_size, c.ppo_epochs = EPISODES, MINIBATCH, 1
  c.data.prompt_len, c.data.response_len = PROMPT_LEN, RESPONSE_LEN
  c.data.seq_len = PROMPT_LEN + RESPONSE_LEN
  c.kl_coef, c.kl_target, c.ptx_coef, c.temperature = 0.02, 0.0, 0.0, 1.0
  return c


def iteration_flops(settings: ppo.PPOSettings) -> dict[str, float]:
  """Model FLOPs of each phase: matmuls with weights and causal attention over T positions.

  The LM head counts only at the N response positions, the only logits PPO needs (the sampler
  and `experience.response_logprobs` compute no others). generate ~ one policy forward (prefill
  + one step per new token); score = policy, reference, value and RM forwards; train = forward +
  backward (3x) of policy and value.
  """
  t = PROMPT_LEN + RESPONSE_LEN

  def forward(model, head):
    per_token = common.train_flops_per_token(model, t) / 3  # includes an LM head
    lm_head = 2 * model.d_model * model.vocab_size
    return EPISODES * (t * (per_token - lm_head) + (RESPONSE_LEN * lm_head if head == 'lm' else 0))

  policy = forward(settings.policy_model, 'lm')
  scalar = forward(settings.reward_model, 'scalar')
  return {'generate': policy, 'score': 2 * policy + 2 * scalar, 'train': 3 * (policy + scalar)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--geometry', default='tiny', choices=config_lib.CPU_PRESETS)
  parser.add_argument('--iters', type=int, default=5, help='timed iterations after 2 warm-up')
  parser.add_argument('--data', type=int, default=1, help='devices the rows are split over')
  args = parser.parse_args()
  if len(jax.devices()) < args.data:
    parser.error(f'--data {args.data} needs {args.data} devices, this host has '
                 f'{len(jax.devices())} (XLA_FLAGS=--xla_force_host_platform_device_count=N)')
  config = workload_config(args.geometry, args.data)
  settings = ppo_stage.settings_from_config(config, eos_id=None, pad_id=0)
  mesh = sharding.make_mesh(dict(config.mesh), jax.devices()[:args.data])
  print(f'machine: {timing.machine()}; jax {jax.__version__}; geometry {args.geometry}; '
        f'{EPISODES} episodes x ({PROMPT_LEN} + {RESPONSE_LEN}) tokens, '
        f'{EPISODES // MINIBATCH} minibatches of {MINIBATCH}, over {args.data} device(s)',
        flush=True)
  peak = timing.matmul_peak_flops()
  print(f'measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s', flush=True)

  _, state_shardings = ppo.abstract_ppo_state(settings, mesh)
  keys = jax.random.split(jax.random.key(0), 3)
  init_lm = functools.partial(state.init_params, settings.policy_model, 'lm')
  init_scalar = functools.partial(state.init_params, settings.reward_model, 'scalar')
  (policy, _), (reference, _) = (sharding.create_sharded(init_lm, mesh, k) for k in keys[:2])
  reward, _ = sharding.create_sharded(init_scalar, mesh, keys[2])
  frozen = ppo.Frozen(reference_params=reference, reward_params=reward,
                      reward_bias=jax.device_put(np.float32(0), sharding.replicated(mesh)))
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
  generate, score, train, rows = ppo_stage.phases(settings, state_shardings, frozen_shardings,
                                                  mesh)
  ppo_state = jax.jit(functools.partial(ppo.init_ppo_state, kl_coef=config.kl_coef,
                                        settings=settings),
                      out_shardings=state_shardings)(policy, reward)
  rng = np.random.default_rng(0)
  prompts = jax.device_put(
      {'tokens': rng.integers(1, settings.policy_model.vocab_size, (EPISODES, PROMPT_LEN),
                              dtype=np.int32),
       'mask': np.ones((EPISODES, PROMPT_LEN), bool)}, rows)

  times = {'generate': [], 'score': [], 'train': [], 'iteration': []}
  for i in range(2 + args.iters):
    key = jax.random.key(i)
    start = time.perf_counter()
    sample = jax.block_until_ready(generate(ppo_state, prompts, key))
    generated = time.perf_counter()
    exp, _ = jax.block_until_ready(score(ppo_state, frozen, prompts, sample))
    scored = time.perf_counter()
    ppo_state, metrics = train(ppo_state, exp, None, key)
    jax.block_until_ready(metrics)
    done = time.perf_counter()
    if i >= 2:  # the first two include compilation and allocator warm-up
      for name, seconds in (('generate', generated - start), ('score', scored - generated),
                            ('train', done - scored), ('iteration', done - start)):
        times[name].append(seconds)
  median = {name: statistics.median(values) for name, values in times.items()}
  flops = iteration_flops(settings)
  total = median['iteration']
  print(f'PPO iteration ({args.geometry}): {total:.3f} s median of {args.iters} '
        f'(runs {min(times["iteration"]):.3f}-{max(times["iteration"]):.3f}), '
        f'{EPISODES / total:.1f} episodes/s, '
        f'{EPISODES * (PROMPT_LEN + RESPONSE_LEN) / total:,.0f} tokens/s')
  for name in ('generate', 'score', 'train'):
    rate = flops[name] / median[name]
    print(f'  {name:9s} {median[name]:.3f} s ({median[name] / total:4.0%})  '
          f'{flops[name] / 1e9:7.1f} GFLOP  {rate / 1e9:6.1f} GFLOP/s = {rate / peak:4.0%} of peak')
  rate = sum(flops.values()) / total
  print(f'  iteration {sum(flops.values()) / 1e9:.1f} GFLOP at {rate / 1e9:.1f} GFLOP/s = '
        f'MFU {rate / peak:.0%} of the measured peak')


if __name__ == '__main__':
  main()

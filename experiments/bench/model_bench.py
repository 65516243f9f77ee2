"""Foundation benchmark: KV-cache decoding cost vs length, and the `small` SFT step vs matmul peak.

  python experiments/bench/model_bench.py [--geometry small] [--decode_batch 8] [--step_cost]
      [--batch 16] [--seq 128]

Prints: for each decode batch size (default 8, the issue's workload: prompt 32, temperature 1),
the seconds to sample 128 and 256 new tokens and their ratio (issue 2: <= 2.2; issue 8:
<= 2.1). A step costs a + b * n for n filled cache slots (a: weights and fixed work, b: reading
one slot's keys and values), so the ratio exceeds 2 by an amount set by b / a, which grows with
the batch; `--step_cost` fits a and b and sets the ratio they predict beside the one bytes alone
allow. Wall time and process CPU time are both printed. Then the training step's achieved
FLOP/s as a fraction of this machine's measured float32 matmul peak (issue 8: >= 50%): the sft
stage's own step (`stages.program`).
"""
import argparse
import functools
import pathlib
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import timing  # noqa: E402

from rlhf_jax import config_lib, sampling, state  # noqa: E402
from rlhf_jax.models import LanguageModel, init_cache  # noqa: E402
from rlhf_jax.stages import common, program  # noqa: E402


def decode_seconds(config, params, batch: int, prompt_len: int, lengths=(128, 256),
                   iters: int = 7) -> dict[int, tuple[list[float], list[float]]]:
  """Wall and process CPU seconds of `iters` `sampling.sample` calls per response length.

  The lengths take turns (128, 256, 128, ...), so that both meet the same spells of load on a
  shared machine; returns {length: (wall times, CPU times)}.
  """
  tokens = jnp.ones((batch, prompt_len), jnp.int32)
  mask = jnp.ones((batch, prompt_len), bool)
  runs = {n: functools.partial(sampling.sample, params, config, tokens, mask, jax.random.key(0),
                               max_new_tokens=n) for n in lengths}
  for run in runs.values():
    run().tokens.block_until_ready()  # compile
  times = {n: ([], []) for n in lengths}
  for _ in range(iters):
    for n, run in runs.items():
      start_wall, start_cpu = time.perf_counter(), time.process_time()
      run().tokens.block_until_ready()
      times[n][0].append(time.perf_counter() - start_wall)
      times[n][1].append(time.process_time() - start_cpu)
  return times


def report_decode(config, params, batch: int, prompt_len: int = 32):
  times = decode_seconds(config, params, batch, prompt_len)
  (wall128, cpu128), (wall256, cpu256) = times[128], times[256]
  med = statistics.median
  print(f'decode batch {batch}, prompt {prompt_len}: 128 tokens {med(wall128):.3f}s, 256 tokens '
        f'{med(wall256):.3f}s (medians of {len(wall128)}), ratio {med(wall256) / med(wall128):.2f};'
        f' fastest runs {min(wall128):.3f}s, {min(wall256):.3f}s, ratio '
        f'{min(wall256) / min(wall128):.2f}; CPU time ratio {med(cpu256) / med(cpu128):.2f} '
        f'(targets <= 2.2, <= 2.1)')


def step_cost_fit(config, params, batch: int, capacity: int = 304,
                  filled=(32, 96, 160, 224)) -> tuple[float, float]:
  """Fits one decode step's wall time as a + b * n over n filled slots at a fixed capacity.

  Each point is the marginal cost of a step: (time of 72 steps - time of 8 steps) / 64, each
  the fastest of 5 calls, so the call's fixed costs (cache allocation, dispatch) cancel. The
  calls of all points take turns, so that a spell of load spoils no point alone. Returns (a, b)
  in seconds and seconds per slot.
  """
  model = LanguageModel(config)

  @functools.partial(jax.jit, static_argnames='steps')
  def steps_from(params, cache, n, steps):
    cache = cache.replace(index=n, mask=jnp.ones_like(cache.mask),
                          positions=jnp.full((batch,), n, jnp.int32))
    def body(_, carry):
      cache, token = carry
      logits, cache = model.apply({'params': params}, token, jnp.ones((batch, 1), bool),
                                  cache=cache)
      return cache, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)[:, None]
    return jax.lax.fori_loop(0, steps, body, (cache, jnp.ones((batch, 1), jnp.int32)))[1]

  cache = init_cache(config, batch, capacity)
  points = [(n, steps) for n in filled for steps in (8, 72)]
  runs = {point: functools.partial(steps_from, params, cache, jnp.int32(point[0]), point[1])
          for point in points}
  for run in runs.values():
    run().block_until_ready()  # compile
  fastest = dict.fromkeys(points, float('inf'))
  for _ in range(5):
    for point, run in runs.items():
      start = time.perf_counter()
      run().block_until_ready()
      fastest[point] = min(fastest[point], time.perf_counter() - start)
  per_step = [(fastest[n, 72] - fastest[n, 8]) / 64 for n in filled]
  b, a = np.polyfit(filled, per_step, 1)
  return a, b


def report_step_cost(config, params, batch: int, prompt_len: int = 32):
  """Prints the fit and the 256 / 128 ratio it predicts, beside the ratio of bytes alone."""
  def ratio(a, b):
    """256 / 128 tokens: N - 1 fed-back steps each, over P + (N - 2) / 2 filled slots on average."""
    cost = lambda n: (n - 1) * (a + b * (prompt_len + (n - 2) / 2))
    return cost(256) / cost(128)

  a, b = step_cost_fit(config, params, batch)
  predicted = ratio(a, b)
  weight_bytes = state.count_params(params) * jnp.dtype(config.dtype).itemsize
  slot_bytes = (2 * config.n_layers * config.kv_heads * config.d_head * batch
                * jnp.dtype(config.dtype).itemsize)
  r = weight_bytes / slot_bytes
  floor = ratio(r, 1.0)
  print(f'decode step, batch {batch}: a = {a * 1e3:.2f} ms + b = {b * 1e6:.1f} us per filled '
        f'slot (a / b = {a / b:.0f}), predicted ratio {predicted:.2f}; bytes alone (weights '
        f'{weight_bytes / 1e6:.0f} MB, {slot_bytes / 1e3:.1f} KB per slot, a / b = {r:.0f}) '
        f'give {floor:.2f}')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--geometry', default='small')
  parser.add_argument('--decode_batch', default='8', help='comma-separated decode batch sizes')
  parser.add_argument('--step_cost', action='store_true',
                      help='also fit the decode step cost a + b * filled slots per batch size')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--seq', type=int, default=128)
  args = parser.parse_args()
  config = config_lib.GEOMETRIES[args.geometry]
  print(f'machine: {timing.machine()}; jax {jax.__version__}; geometry {args.geometry}')
  peak = timing.matmul_peak_flops()
  print(f'measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s')

  params = nn.unbox(jax.jit(functools.partial(state.init_params, config, 'lm'))(jax.random.key(0)))
  for batch in args.decode_batch.split(','):
    report_decode(config, params, int(batch))
    if args.step_cost:
      report_step_cost(config, params, int(batch))

  # The sft stage's own step (stages/program.py): its dropout, optimizer and training geometry
  # (unrolled on CPU presets), on its mesh over this machine's devices.
  stage = config_lib.load_config(f'{config_lib.CONFIG_DIR}/sft.py:{args.geometry}')
  stage.batch_size = args.batch
  mesh = common.mesh(stage)
  train = program.program(stage, mesh, total_steps=1000)
  train_state = jax.jit(functools.partial(state.create_train_state, tx=train.tx),
                        out_shardings=train.state_shardings)(params)
  rng = np.random.default_rng(0)
  batch = jax.device_put(
      {'tokens': jnp.asarray(rng.integers(0, config.vocab_size, (args.batch, args.seq)),
                             jnp.int32),
       'mask': jnp.ones((args.batch, args.seq), bool),
       'loss_mask': jnp.ones((args.batch, args.seq), bool).at[:, 0].set(False)},
      train.batch_shardings)
  holder = [train_state]

  def one_step():
    holder[0], metrics = train.step(holder[0], batch, jax.random.key(1))
    metrics['sft/loss'].block_until_ready()

  seconds = timing.median_seconds(one_step, warmup=2, iters=5)
  flops = common.train_flops_per_token(config, args.seq) * args.batch * args.seq
  print(f'sft_step batch {args.batch}x{args.seq}: {seconds * 1e3:.1f} ms, '
        f'{flops / seconds / 1e9:.1f} GFLOP/s = {flops / seconds / peak:.0%} of peak '
        f'(target >= 50%); {args.batch * args.seq / seconds:,.0f} tokens/s')


if __name__ == '__main__':
  main()

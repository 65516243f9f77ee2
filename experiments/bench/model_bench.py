"""Foundation benchmark: KV-cache decoding cost vs length, and the `small` SFT step vs matmul peak.

  python experiments/bench/model_bench.py [--geometry small] [--decode_batch 8] [--batch 16]
      [--seq 128]

Prints: for each decode batch size (default 8, the issue's workload: prompt 32, temperature 1),
the seconds to sample 128 and 256 new tokens and their ratio (target <= 2.2x). A step costs
a + b * n for n filled cache slots (a: weights and fixed work, b: reading one slot's keys and
values), so the ratio exceeds 2 by an amount set by b / a, which grows with the batch. Wall
time and process CPU time are both printed: on a shared machine CPU time is the steadier of the
two. Then the training step's achieved FLOP/s as a fraction of this machine's measured float32
matmul peak (issue 8: >= 50%), with the geometry the sft stage differentiates.
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

from rlhf_jax import config_lib, optim, sampling, sft, state  # noqa: E402


def decode_seconds(config, params, batch: int, prompt_len: int, new_tokens: int,
                   iters: int = 5) -> tuple[float, float]:
  """Median (wall, process CPU) seconds of one `sampling.sample` call (temperature 1, no EOS)."""
  tokens = jnp.ones((batch, prompt_len), jnp.int32)
  mask = jnp.ones((batch, prompt_len), bool)
  run = lambda: sampling.sample(params, config, tokens, mask, jax.random.key(0),
                                max_new_tokens=new_tokens).tokens.block_until_ready()
  run()  # compile
  wall, cpu = [], []
  for _ in range(iters):
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    run()
    wall.append(time.perf_counter() - start_wall)
    cpu.append(time.process_time() - start_cpu)
  return statistics.median(wall), statistics.median(cpu)


def report_decode(config, params, batch: int, prompt_len: int = 32):
  (w128, c128), (w256, c256) = (decode_seconds(config, params, batch, prompt_len, n)
                                for n in (128, 256))
  print(f'decode batch {batch}, prompt {prompt_len}: 128 tokens {w128:.3f}s, 256 tokens '
        f'{w256:.3f}s, ratio {w256 / w128:.2f} (target <= 2.2); CPU time {c128:.3f}s, '
        f'{c256:.3f}s, ratio {c256 / c128:.2f}')


def train_flops_per_step(config, n_params: int, batch: int, seq: int) -> float:
  """6 N per token for the matmuls with parameters, plus causal attention's QK^T and AV
  (forward 2 * 2 * T * d_head * heads per token, halved by causality; x3 for backward)."""
  tokens = batch * seq
  attention = 3 * 2 * config.n_layers * seq * config.n_heads * config.d_head * tokens
  return 6 * n_params * tokens + attention


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--geometry', default='small')
  parser.add_argument('--decode_batch', default='8', help='comma-separated decode batch sizes')
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

  opt = config_lib.optimizer_config(3e-4)
  tx = optim.make_optimizer(opt, 1000)
  train_state = state.create_train_state(params, tx)
  # The geometry the sft stage's step differentiates (configs/sft.py: unrolled on CPU presets).
  stage = config_lib.load_config(f'{config_lib.CONFIG_DIR}/sft.py:{args.geometry}')
  model = state.make_model(config_lib.training_model(config, stage), 'lm')
  step = jax.jit(functools.partial(sft.sft_step, model=model, tx=tx), donate_argnums=0)
  rng = np.random.default_rng(0)
  batch = {'tokens': jnp.asarray(rng.integers(0, config.vocab_size, (args.batch, args.seq)),
                                 jnp.int32),
           'mask': jnp.ones((args.batch, args.seq), bool),
           'loss_mask': jnp.ones((args.batch, args.seq), bool).at[:, 0].set(False)}
  holder = [train_state]

  def one_step():
    holder[0], metrics = step(holder[0], batch, jax.random.key(1))
    metrics['sft/loss'].block_until_ready()

  seconds = timing.median_seconds(one_step, warmup=2, iters=5)
  n_params = state.count_params(params)
  flops = train_flops_per_step(config, n_params, args.batch, args.seq)
  print(f'sft_step batch {args.batch}x{args.seq}: {seconds * 1e3:.1f} ms, '
        f'{flops / seconds / 1e9:.1f} GFLOP/s = {flops / seconds / peak:.0%} of peak '
        f'(target >= 50%); {args.batch * args.seq / seconds:,.0f} tokens/s')


if __name__ == '__main__':
  main()

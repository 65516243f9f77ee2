"""Foundation benchmark: KV-cache decoding cost vs length, and the `small` SFT step vs matmul peak.

  python experiments/bench/model_bench.py [--geometry small] [--batch 16] [--seq 128]

Prints: seconds to decode 128 and 256 tokens and their ratio (target <= 2.2x: with a cache each
new token costs about the same, so doubling length about doubles time); and the training step's
achieved FLOP/s as a fraction of this machine's measured float32 matmul peak (target >= 40%).
"""
import argparse
import functools
import sys
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import timing  # noqa: E402

from rlhf_jax import config_lib, optim, sampling, sft, state  # noqa: E402


def decode_seconds(config, params, batch: int, prompt_len: int, new_tokens: int) -> float:
  tokens = jnp.ones((batch, prompt_len), jnp.int32)
  mask = jnp.ones((batch, prompt_len), bool)
  run = lambda: sampling.sample(params, config, tokens, mask, jax.random.key(0),
                                max_new_tokens=new_tokens).tokens.block_until_ready()
  return timing.median_seconds(run, warmup=1, iters=3)


def train_flops_per_step(config, n_params: int, batch: int, seq: int) -> float:
  """6 N per token for the matmuls with parameters, plus causal attention's QK^T and AV
  (forward 2 * 2 * T * d_head * heads per token, halved by causality; x3 for backward)."""
  tokens = batch * seq
  attention = 3 * 2 * config.n_layers * seq * config.n_heads * config.d_head * tokens
  return 6 * n_params * tokens + attention


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--geometry', default='small')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--seq', type=int, default=128)
  args = parser.parse_args()
  config = config_lib.GEOMETRIES[args.geometry]
  print(f'machine: {timing.machine()}; jax {jax.__version__}; geometry {args.geometry}')
  peak = timing.matmul_peak_flops()
  print(f'measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s')

  params = nn.unbox(jax.jit(functools.partial(state.init_params, config, 'lm'))(jax.random.key(0)))
  t128 = decode_seconds(config, params, 8, 32, 128)
  t256 = decode_seconds(config, params, 8, 32, 256)
  print(f'decode batch 8, prompt 32: 128 tokens {t128:.3f}s, 256 tokens {t256:.3f}s, '
        f'ratio {t256 / t128:.2f} (target <= 2.2)')

  opt = config_lib.optimizer_config(3e-4)
  tx = optim.make_optimizer(opt, 1000)
  train_state = state.create_train_state(params, tx)
  model = state.make_model(config, 'lm')
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
        f'(target >= 40%); {args.batch * args.seq / seconds:,.0f} tokens/s')


if __name__ == '__main__':
  main()

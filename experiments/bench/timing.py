"""Timing helpers shared by the benchmark scripts: median wall time and the machine's matmul peak."""
import statistics
import time

import jax
import jax.numpy as jnp


def median_seconds(fn, *, warmup: int = 2, iters: int = 5) -> float:
  """Median wall time of `fn()` (which must block on its result) after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak_flops(n: int = 4096, dtype=jnp.float32) -> float:
  """Measured FLOP/s of one large square matmul: the practical peak the benchmarks compare to."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  seconds = median_seconds(lambda: f(a, b).block_until_ready(), warmup=2, iters=5)
  return 2 * n**3 / seconds


def machine() -> str:
  import os
  import platform
  return f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].platform}'

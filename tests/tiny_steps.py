"""What the step tests (test_sft, test_rm, test_step_sharding) share: a 2-layer tiny geometry,
an optimizer, synthetic batches of each kind, fresh train states."""
import flax.linen as nn
import jax
import numpy as np

from rlhf_jax import config_lib, state

B, K, T = 8, 4, 16
OPT = config_lib.optimizer_config(1e-3, schedule='cosine', final_lr_frac=0.1)
# Adam's first update is lr * g / (|g| + eps): with eps 1e-8, a 1e-10 reordering difference in a
# near-zero gradient moves that update by ~lr / 100, so sharded and unsharded steps would differ
# by far more than their gradients do. eps 1e-6 keeps the sharding comparison about gradients.
OPT.eps = 1e-6
TOTAL_STEPS = 100


def tiny(**changes):
  return config_lib.GEOMETRIES['tiny'].replace(n_layers=2, max_len=32, **changes)


def token_batch(vocab, seed=0, b=B, t=T):
  """A TokenBatch [b, t] of right-padded rows; loss on a random 'completion' suffix, never on
  the first token."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(t // 2, t + 1, b)
  prompt_lengths = rng.integers(1, t // 2, b)
  pos = np.arange(t)[None, :]
  mask = pos < lengths[:, None]
  tokens = np.where(mask, rng.integers(1, vocab, (b, t)), 0).astype(np.int32)
  loss_mask = mask & (pos >= prompt_lengths[:, None])
  return {'tokens': tokens, 'mask': mask, 'loss_mask': loss_mask,
          'segment_ids': mask.astype(np.int32), 'positions': np.where(mask, pos, 0)}


def ranking_batch(vocab, seed=0):
  """A RankingBatch [B, K, T]: K_max = 4 with 2..4 real completions per prompt, ties, and all-pad
  rows for missing ones."""
  rng = np.random.default_rng(seed)
  n_real = np.array([4, 3, 2, 4, 3, 4, 2, 4])
  valid = np.arange(K)[None, :] < n_real[:, None]  # [B, K]
  lengths = rng.integers(4, T + 1, (B, K))
  mask = (np.arange(T)[None, None, :] < lengths[..., None]) & valid[..., None]  # [B, K, T]
  tokens = np.where(mask, rng.integers(1, vocab, (B, K, T)), 0).astype(np.int32)
  ranks = np.where(valid, rng.integers(0, 3, (B, K)), -1).astype(np.int32)  # 3 levels: ties
  return {'tokens': tokens, 'mask': mask, 'ranks': ranks, 'valid': valid}


def fresh_state(config, tx, head: str, seed=0):
  """A step-0 TrainState of a `head` ('lm' or 'scalar') model, unsharded."""
  params = nn.unbox(jax.jit(lambda r: state.init_params(config, head, r))(jax.random.key(seed)))
  return state.create_train_state(params, tx)

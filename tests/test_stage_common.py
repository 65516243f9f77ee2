"""stages.common: metric sums over padded global batches."""
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import sharding
from rlhf_jax.stages import common


@jax.jit
def _sums(params, batch):  # an eval step: sums with their denominator, padding excluded
  return {'loss_sum': jnp.sum(jnp.where(batch['valid'], params * batch['x'], 0.0)),
          'rows': jnp.sum(batch['valid']).astype(jnp.float32)}


def test_sum_metrics_over_padded_batches_is_the_mean_over_records():
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  rows = sharding.batch_sharding(mesh)
  x = np.arange(1.0, 12.0, dtype=np.float32)  # 11 records in batches of 8: the last has 5 padding
  padded = np.concatenate([x, np.full(5, 1e6, np.float32)])[:, None]  # [16, 1] rows
  valid = (np.arange(16) < 11)[:, None]
  batches = [{'x': padded[i:i + 8], 'valid': valid[i:i + 8]} for i in (0, 8)]
  total = common.sum_metrics(_sums, jnp.float32(2.0), batches, rows)
  assert total['loss_sum'] / total['rows'] == 2 * x.mean()
  assert common.sum_metrics(_sums, jnp.float32(2.0), [], rows)['loss_sum'] == 0

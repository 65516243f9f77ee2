"""The device mesh and the logical-to-physical axis rules: the only module that names mesh axes.

Models annotate parameters with logical names (`vocab, embed, heads, kv_heads, kv, mlp, layers`)
and activations with `act_*` names. `RULES` maps them to the mesh axes ('data', 'fsdp', 'tensor'),
first match wins and each mesh axis is used at most once per array (flax's resolution order).
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

RULES: tuple[tuple[str, Any], ...] = (
    # Parameters: FSDP splits the model dimension, tensor parallelism splits heads / MLP / vocab.
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('kv', None),
    ('layers', None),
    # Activations: batch over data and fsdp; heads, mlp and vocab over tensor.
    ('act_batch', BATCH_AXES),
    ('act_length', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_kv_heads', 'tensor'),
    ('act_kv', None),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
)


def mesh_shape(sizes: dict[str, int], n_devices: int) -> tuple[int, ...]:
  """Resolves one -1 among the axis sizes; raises ValueError if they cannot cover the devices."""
  shape = [int(sizes[a]) for a in AXES]
  if shape.count(-1) > 1:
    raise ValueError(f'mesh: at most one axis may be -1, got {dict(zip(AXES, shape))}')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if n_devices % known:
      raise ValueError(f'mesh: {n_devices} devices not divisible by {dict(zip(AXES, shape))}')
    shape[shape.index(-1)] = n_devices // known
  if int(np.prod(shape)) != n_devices:
    raise ValueError(f'mesh: {dict(zip(AXES, shape))} needs {int(np.prod(shape))} devices, '
                     f'have {n_devices}')
  return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices of all processes).

  A logical axis may span part of a physical torus axis (fsdp 8 x tensor 8 on a v5p 4x4x4
  slice); jax.make_mesh refuses that by default, so the device order is built with it allowed.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(sizes, len(devices))
  order = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  return Mesh(order, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def logical_spec(names: Sequence[str | None]) -> PartitionSpec:
  return nn.logical_to_mesh_axes(tuple(names), RULES)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], axis_sizes: dict[str, int]) -> PartitionSpec:
  """Drops mesh axes that do not divide their dimension: that dimension stays replicated.

  This is what grouped-query attention needs when there are fewer key/value heads than the
  tensor axis has devices (e.g. 2 kv heads on tensor=4): the kv projections are replicated.
  """
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept, size = [], 1
    for axis in axes:
      if dim % (size * axis_sizes[axis]) == 0:
        kept.append(axis)
        size *= axis_sizes[axis]
    fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*fitted)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Constrains an activation's sharding by logical names; a no-op when no mesh is set."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, fit_spec(logical_spec(names), x.shape, dict(mesh.shape)))


def traced_in_mesh(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
  """`fn` tracing under `mesh`, for jax.jit: `constrain` reads the mesh of the trace, and jit
  sets none from its shardings, so without this every activation constraint of a jitted step is
  a no-op and the compiler picks the layouts (issue 21: the PPO update then held the whole
  minibatch on every device)."""
  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  # jit names the program (profiles, compiler dumps) after the function: keep the step's name.
  named = fn
  while isinstance(named, functools.partial):
    named = named.func
  traced.__name__ = traced.__qualname__ = getattr(named, '__name__', 'step')
  return traced


def logical_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree whose leaves are nn.LogicallyPartitioned (or plain: replicated)."""
  def leaf_sharding(leaf):
    names = leaf.names if isinstance(leaf, nn.LogicallyPartitioned) else ()
    shape = nn.unbox(leaf).shape
    return NamedSharding(mesh, fit_spec(logical_spec(names), shape, dict(mesh.shape)))
  return jax.tree.map(leaf_sharding, abstract_tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading axis over the batch axes, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def create_sharded(init_fn: Callable[..., Any], mesh: Mesh, *args) -> tuple[Any, Any]:
  """Builds `init_fn(*args)` directly in its sharded layout; full arrays never sit on one device.

  Returns:
    (tree, shardings): the tree with logical-partitioning boxes removed, and its shardings.
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_shardings(abstract, mesh)
  tree = jax.jit(init_fn, out_shardings=shardings)(*args)
  return nn.unbox(tree), nn.unbox(shardings)


def abstract_sharded(init_fn: Callable[..., Any], mesh: Mesh, *args) -> tuple[Any, Any]:
  """What `create_sharded` would build, without allocating: ShapeDtypeStructs that carry their
  shardings (a restore target, or arguments to lower a step on), and the shardings."""
  abstract = jax.eval_shape(init_fn, *args)
  shardings = nn.unbox(logical_shardings(abstract, mesh))
  return with_shardings(nn.unbox(abstract), shardings), shardings


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the restore target, so arrays land sharded.

  `shardings` matches `abstract` or is a prefix of it (one sharding for a whole subtree).
  """
  def attach(sharding, subtree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        subtree)
  return jax.tree.map(attach, shardings, abstract,
                      is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))


def batch_size_multiple(mesh: Mesh) -> int:
  """Global batch sizes must be divisible by this."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))

"""PPO without pretraining mix (InstructGPT App. C.4 with gamma = 0).

Paper: 256k episodes, rollout batch 512 split into 8 minibatches of 64, one epoch; fixed KL
coefficient beta 0.02 to the sft_init model; value function initialised from the 6B RM with lr 9e-6
(5e-6 for 175B); constant lr with a 10-iteration warmup from 0.1x; EMA decay 0.992; GAE with no
discount; clip 0.2; sampling temperature 1. The final policy lr is not printed (App. E.9 sweeps
2.55e-6..2.55e-5; PPO without ptx diverged above 8.05e-6): we take 5.10e-6, a swept value below it.
GAE lambda, value clipping and whitening are not stated; we follow lm-human-preferences
(lambda 0.95, value clip 0.2, whitened advantages).

Usage: python -m rlhf_jax.main --config=configs/ppo.py[:1.3b] [--config.kl_coef=0.02]
"""
from rlhf_jax import config_lib

# App. C.4: "Exponential moving averages of the weights are applied, with a decay rate of 0.992."
PAPER_EPISODES, PAPER_BATCH, PAPER_EMA_DECAY = 256_000, 512, 0.992
# InstructGPT-mini on a 2-core CPU (tiny geometry), sized for a few minutes of PPO-ptx: 64
# iterations of 64 episodes in 4 minibatches of 16, measured 2026-12-01 at ~1.2 s each
# (generate 15%, score 21%, train 64%) after a first (compiling) iteration. The paper's 8 x 64 per iteration
# would leave ~20 iterations; more, smaller iterations give the KL and the reward time to move.
# A ~1M-parameter policy needs a larger lr than the paper's 6B one (as in sft.py / rm.py). The
# paper warms up over 10 of 500 iterations (2%); 3 of 64 keeps the short run mostly at peak.
MINI = dict(lr=2e-5, value_lr=5e-5, episodes=4096, batch_size=64, minibatch_size=16,
            warmup=3, response_len=48)

# Paper geometries: bf16 compute over fp32 master weights (App. C: "fp16 weights and activations,
# with fp32 master copies"; bf16 needs no loss scaling), per-layer remat for all four models, and
# the v5p slice and mesh on which `python -m rlhf_jax.aot` finds every phase fits (README, "Fit
# before you launch"). geometry -> (topology, mesh, remat policy). The batch is split over data as
# well as fsdp: the score phase's [B / data, T, V] logits are not split over fsdp by the compiler.
SCALE = {'1.3b': ('v5p:4x4x4', dict(data=8, fsdp=8, tensor=1), 'full'),
         '6b': ('v5p:4x4x8', dict(data=4, fsdp=16, tensor=2), 'full'),
         '175b': ('v5p:8x8x8', dict(data=1, fsdp=64, tensor=8), 'full')}


def ema_decay(iterations: int) -> float:
  """An EMA decay that forgets the initial policy as much over `iterations` as the paper's does.

  Paper: 0.992 per iteration over 500 iterations leaves 0.992**500 = 1.8% of sft_init in the
  EMA. Kept per iteration at 0.992, a 64-iteration mini run would leave 60%: the "EMA policy"
  would be mostly sft_init. So short runs use decay**iterations = 0.992**500 (0.939 for 64).
  """
  return PAPER_EMA_DECAY ** (PAPER_EPISODES / PAPER_BATCH / max(iterations, 1))


def get_config(arg=None):
  geometry = config_lib.geometry_arg(arg)
  paper = geometry in config_lib.PAPER_GEOMETRIES
  c = config_lib.base_config(geometry)
  c.stage = 'ppo'
  c.mesh = config_lib.mesh_for(geometry)
  c.data = config_lib.data_config(c.model.geometry)
  if not paper:
    # Mini-world demonstrations are at most 33 tokens with EOS: 48 leaves room to stop.
    c.data.response_len = MINI['response_len']
  c.reward_model = config_lib.model_config_dict(config_lib.reward_geometry(geometry))
  if paper:
    c.topology, mesh, remat = SCALE[geometry]
    c.mesh.update(mesh)
    for model in (c.model, c.reward_model):
      model.dtype, model.remat = 'bfloat16', remat
  value_lr = (5e-6 if geometry == '175b' else 9e-6) if paper else MINI['value_lr']
  lr = 5.10e-6 if paper else MINI['lr']
  c.optimizer = config_lib.optimizer_config(lr, schedule='constant')
  c.value_optimizer = config_lib.optimizer_config(value_lr, schedule='constant')
  for opt in (c.optimizer, c.value_optimizer):
    opt.warmup_steps = 10 if paper else MINI['warmup']  # iterations, from one tenth of the peak
    opt.warmup_start_frac = 0.1
  c.episodes = PAPER_EPISODES if paper else MINI['episodes']
  c.batch_size = PAPER_BATCH if paper else MINI['batch_size']  # episodes per iteration
  c.minibatch_size = 64 if paper else MINI['minibatch_size']
  c.ppo_epochs = 1
  # Generate and score the batch in this many chunks of rows, one after the other: divides the
  # sampler's KV cache and the score phase's [B, N, V] logits (their peak memory) by it.
  c.rollout_chunks = 1
  c.kl_coef = 0.02
  c.kl_target = 0.0  # > 0 switches to the adaptive controller of lm-human-preferences
  c.kl_horizon = 10_000
  c.ptx_coef = 0.0
  c.ptx_per_episode = 8  # pretraining rows per episode of each minibatch (used when ptx_coef > 0)
  c.ptx_chunks = 1  # accumulate the ptx gradient over this many chunks of rows (memory)
  c.clip = 0.2
  c.value_clip = 0.2
  c.gae_gamma = 1.0
  c.gae_lambda = 0.95
  c.whiten_rewards = False
  c.whiten_advantages = True
  c.temperature = 1.0
  c.no_eos_penalty = -1.0  # score of a response that never emits EOS (lm-human-preferences)
  c.ema_decay = PAPER_EMA_DECAY if paper else ema_decay(c.episodes // c.batch_size)
  c.init_from = 'sft_init'
  c.reward_from = 'rm'
  # Validation and selection (App. E.9: the paper kept the PPO checkpoints of highest validation
  # Likert). Every eval_every iterations the EMA policy answers `valid_prompts` PPO validation
  # prompts and the world's training labelers judge it against `baseline_from`'s answers; the
  # iteration with the best `select_by` (iteration 0, sft_init itself, included) is what the
  # eval stage evaluates. Before training, best-of-`best_of_n` SFT samples picked by the RM are
  # judged the same way: if they cannot beat SFT, no PPO setting will. The paper geometries
  # and real-data recipes have no simulated labelers: 0 keeps the last iteration.
  c.valid_prompts = 0 if paper else 256
  c.eval_every = 8
  c.select_by = 'valid/likert'
  c.baseline_from = 'sft'
  c.best_of_n = 0 if paper else 16
  # Every iteration already waits for its phases (time/*), so logging each one costs nothing.
  c.log_every = 1
  # A table of 8 rollouts (prompt, response, score, KL) every this many iterations (0 = none):
  # rollouts.jsonl, TensorBoard text and W&B, as TRL logs its query / response / reward table.
  c.rollout_table_every = 10
  c.checkpoint_every = 10
  c.then = ()  # stages to run after this one (same workdir and seed)
  return c

"""Real-data recipes: InstructGPT's three steps on a public preference dataset (a config file per
dataset: hh.py for Anthropic HH-RLHF, tldr.py for OpenAI's summarize-from-feedback), from
Pythia-1B (default) or GPT-2, on one GPU or a TPU v5e-8. A recipe's argument picks the stage and
the model, `stage=STAGE,geometry=NAME`, either one optional (ppo_ptx, pythia-1b).

Not runnable here (no downloads); `tests/test_recipes.py` loads and validates every stage. On a
machine with the data and a checkpoint (the README lists the commands):

  huggingface-cli download EleutherAI/pythia-1b --local-dir checkpoints/pythia-1b
  python -m rlhf_jax.data convert --format=hh-rlhf hh/train.jsonl data/hh/rankings.jsonl
  python -m rlhf_jax.data convert --format=hh-rlhf --kind=demonstrations hh/train.jsonl \
      data/hh/demonstrations.jsonl        # (and the test split into *_valid.jsonl)
  python -m rlhf_jax.main --config=configs/recipes/hh.py:stage=ppo_ptx,geometry=pythia-1b

The PPO-ptx stage runs its missing inputs (sft_init, label = import of the rankings, rm, sft)
with the same recipe file (`stage_configs`). Hyperparameters are the paper's 1.3B ones (App. C).
Pretraining text for ptx and sft_init (C.3) is any {"text"} JSONL of the base model's
pretraining distribution (e.g. a Pile slice for Pythia).
"""
from rlhf_jax import config_lib

ppo = config_lib.sibling_config(str(config_lib.CONFIG_DIR / 'ppo.py'), 'ppo')

CHECKPOINTS = {'pythia-1b': 'checkpoints/pythia-1b', 'gpt2': 'checkpoints/gpt2'}
# App. C for the 1.3B policy (C.1 SFT, C.3 sft_init, C.2 RM, C.4 PPO-ptx with the E.9 lr sweep's
# 1.02e-5); HH's ~160k demonstrations need one epoch where the paper's 13k took 16.
STAGE_FIELDS = {
    'sft': dict(epochs=1, batch_size=32, lr=9.65e-6),
    'sft_init': dict(epochs=1, batch_size=32, lr=5e-6),
    'rm': dict(epochs=1, batch_size=64, lr=9e-6, k_max=2, init_from='sft'),
    # Rollouts generated and scored, and the 8 x 64 pretraining rows of each update
    # differentiated, 64 rows at a time: whole, their KV cache and logits need 17 (generate),
    # 62 (score) and 16.2 (ppo_step) GB per v5e chip (aot); in chunks every phase fits.
    # No simulated labelers to validate with: the last iteration is kept (valid_prompts 0).
    # The shipped config is loaded at its default (mini-world) geometry, whose gamma and ptx
    # rows are the mini world's: the paper's (C.4) are set here.
    'ppo_ptx': dict(episodes=256_000, batch_size=512, minibatch_size=64, lr=1.02e-5,
                    ema_decay=ppo.PAPER_EMA_DECAY, rollout_chunks=8, ptx_chunks=8,
                    valid_prompts=0, best_of_n=0, ptx_coef=27.8, ptx_per_episode=8),
    'label': {},
}
# (sequence, prompt) tokens; GPT-2's context is 1024. HH dialogues are long with short replies;
# TL;DR posts are up to ~512 tokens with summaries under ~50 (lm-human-preferences used 500 + 75).
LENGTHS = {'hh': (1024, 768), 'tldr': (640, 512)}


def recipe(dataset: str, config_file: str, arg: str | None):
  """The stage `arg` names: its shipped config, moved onto the dataset, a HF checkpoint and one
  accelerator; its input stages are loaded from `config_file` (the dataset's recipe) too."""
  seq_len, prompt_len = LENGTHS[dataset]
  stage, geometry = _stage_and_geometry(arg)
  c = config_lib.load_config(str(config_lib.CONFIG_DIR / f'{stage}.py'))
  c.model = config_lib.model_config_dict(geometry)
  if 'pipeline_geometry' in c:  # the RM is the policy's model family and size here
    c.pipeline_geometry = geometry
  fields = dict(STAGE_FIELDS[stage])
  if 'lr' in fields:
    c.optimizer.lr = fields.pop('lr')
  c.update(fields)
  if stage in ('sft', 'sft_init'):
    c.init_from = f'hf:{CHECKPOINTS[geometry]}'
  c.workdir = f'runs/{dataset}_{geometry}'
  # The eval stage judges with the mini world's held-out labelers; real data has none.
  c.then = ()
  c.stage_configs = f'{config_file}:stage={{stage}},geometry={{geometry}}'
  # One GPU or a TPU v5e-8: parameters, gradients and Adam moments split over every chip (FSDP):
  # PPO holds four 1B models, ~32 GB of fp32 weights and moments, twice a v5e chip's 16 GiB.
  # bf16 compute, fp32 master weights.
  c.mesh = config_lib.ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.model.dtype = 'bfloat16'
  c.model.remat = 'full'
  # The shipped configs load at the mini world's CPU geometry, whose training steps unroll the
  # layer loop (config_lib.base_config); unrolled, a 1B model's update keeps every layer's
  # activations at once (the HH PPO-ptx update: 21.0 GiB per v5e chip, 9.4 with the loop).
  c.unroll_update_layers = False
  if 'data' in c:
    c.data.seq_len, c.data.prompt_len, c.data.response_len = seq_len, prompt_len, seq_len - prompt_len
    c.data.tokenizer = CHECKPOINTS[geometry]
    c.data.update(dict(
        pretrain='data/pretrain/text.jsonl', pretrain_valid='data/pretrain/text_valid.jsonl',
        demonstrations=f'data/{dataset}/demonstrations.jsonl',
        demonstrations_valid=f'data/{dataset}/demonstrations_valid.jsonl',
        rankings=f'data/{dataset}/rankings.jsonl',
        rankings_valid=f'data/{dataset}/rankings_valid.jsonl',
        prompts=f'data/{dataset}/prompts.jsonl', prompts_valid=f'data/{dataset}/prompts_valid.jsonl'))
  if 'reward_model' in c:  # the RM and value function are the same model family
    c.reward_model = config_lib.model_config_dict(geometry)
    c.reward_model.dtype, c.reward_model.remat = 'bfloat16', 'full'
    c.value_optimizer.lr = 9e-6
    c.data.response_len = seq_len - prompt_len
  return c


def _stage_and_geometry(arg: str | None) -> tuple[str, str]:
  """(stage, geometry) of a recipe argument 'stage=STAGE,geometry=NAME'."""
  args = {'stage': 'ppo_ptx', 'geometry': 'pythia-1b'}
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    if key not in args or not value:
      raise config_lib.ConfigError(f'recipe argument {item!r}; use stage=STAGE,geometry=NAME')
    args[key] = value
  if args['stage'] not in STAGE_FIELDS:
    raise config_lib.ConfigError(f'recipe stage {args["stage"]!r}; use one of '
                                 f'{sorted(STAGE_FIELDS)}')
  if args['geometry'] not in CHECKPOINTS:
    raise config_lib.ConfigError(f'recipe geometry {args["geometry"]!r}; use one of '
                                 f'{sorted(CHECKPOINTS)}')
  return args['stage'], args['geometry']

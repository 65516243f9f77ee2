"""python -m rlhf_jax.hf: see `cli`."""
import sys

from rlhf_jax.hf import cli

sys.exit(cli.main(sys.argv))

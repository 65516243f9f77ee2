"""Hugging Face folders <-> rlhf_jax: architecture families and tensor layouts (`families`),
import (`importer.load_hf`), export (`exporter.export_hf`), and the command line
(`python -m rlhf_jax.hf`, `cli`).

Only this package reads or writes Hugging Face files; `models/` holds the model code alone.
"""


class HFError(ValueError):
  """A Hugging Face folder or export request we cannot handle; the message is one line."""

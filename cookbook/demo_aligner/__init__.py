"""The recipe of the shipped demo Aligner (``aligner_chains/demo/model/``), kept out of the installed package.

``dataset.py`` builds its training and held-out examples (copy clean answers, redact e-mails and
phones, refuse clearly dangerous requests) from the public-text slices in ``sources/`` (licences in
``sources/README.md``), with ``variety.py`` composing more varied training rows; ``extract_sources.py``
re-extracts those slices; ``train.py`` trains, averages, scores and installs the model. From the
repository root, ``python -m cookbook.demo_aligner.train --workdir runs/demo --install`` reproduces
the shipped model from the repository alone and installs it into ``aligner_chains/demo/model/``.
"""

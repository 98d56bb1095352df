"""Human in the loop: which unlabelled volume to annotate next.

``uncertainty`` (entropy of the model's predictions under test-time rotations), ``embedding`` (where a
volume lies in the encoder's feature space), ``analysis`` (both from one pass of the network over a
volume), ``selection`` (greedy ranking: uncertain and unlike what is labelled or already chosen) and
``suggest`` (files in, ranked table out; ``maclcore suggest``).
"""

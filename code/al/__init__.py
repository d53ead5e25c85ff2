"""The active-learning library shared by the scripts in ``code/``.

Dependencies point one way: ``cli -> grid -> loop -> {strategies -> keras_ops, runs}``;
``bench -> {cli, keras_ops, runs}`` serves only the benchmark scripts; ``data_*`` and
``models`` are leaves that anything may import, and nothing in this package imports a script. TensorFlow, Keras and Ray are imported lazily (inside functions), so
``--help`` and the pure-numpy parts start fast.
"""

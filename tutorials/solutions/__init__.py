"""Reference solutions to the tutorial exercises, one module per notebook.

Written the way a learner would: plain loops first, NumPy where it is clear.
The notebooks' tests run with these filled in.
"""

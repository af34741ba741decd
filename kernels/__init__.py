"""mmhnet.kernels: Triton kernels (plain @triton.jit functions and thin launchers, no autograd).

Installed as the package ``mmhnet.kernels`` (setup.py maps this folder), never as a top-level
``kernels`` import. Importing it needs triton; the ops import it lazily.
"""

"""Backbone adapters: a diffusion model + a selection + settings → Features.

``base`` holds the shared recipe; one file per model family (``stable_diffusion``, ``sdxl``);
``tiny`` builds small random-weight models with the real module names for tests and the demo.
"""

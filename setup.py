"""Only the optional C accelerator lives here; everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cdc_assets.commitlog._mutation_accel",
            ["cdc_assets/commitlog/_mutation_accel.c"],
            # A failed compile (no compiler, no Python headers) leaves the pure-Python decoder in charge.
            optional=True,
        )
    ]
)
